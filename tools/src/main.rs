//! The `spindle` binary. Subcommands are added as the layers under them land.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("spindle: no subcommands yet")
}
