//! The operating system's CSPRNG. A failure to get randomness is not recoverable
//! in a way that keeps keys safe, so it aborts the operation loudly.

pub fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

pub fn array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    fill(&mut a);
    a
}
