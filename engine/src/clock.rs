//! Time for the engine: wall clock and hybrid logical clock. (Being written.)
