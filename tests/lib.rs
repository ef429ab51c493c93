//! Helpers shared by the black-box tests in this folder: finding the built
//! `spindle` binary, starting it on a free port with a temporary data
//! directory, and locating `../shared/corpus` (tests skip, saying so, when it
//! is absent).
