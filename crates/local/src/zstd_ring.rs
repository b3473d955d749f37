//! One zstd frame written through a ring buffer we own, compressed on the calling thread.
//!
//! Why not the `zstd` crate's streaming encoder: zstd's streaming API copies input into an internal
//! buffer of window + one block, so once it wraps nearly every block is compressed in the "external
//! dictionary" mode, the slow path; its multithreaded mode avoids that but, with one worker per NAR
//! and several NARs on few cores, spends the saving on handing jobs between threads. Measured with two
//! NARs compressed at once on this 2-core machine (level 3, 735 MB): streaming 5.75 CPU-s, multithreaded
//! (one worker, 2 MiB jobs) 6.5, this ring 5.25 — and slightly smaller output (docs/benchmarks.md "Push").
//!
//! How: zstd's buffer-less API (`ZSTD_compressBegin`/`Continue`/`End`) compresses straight from our
//! buffer and only requires that the last window of input stays in place. The ring holds four
//! windows; input is copied in and compressed a piece (1 MiB, a multiple of zstd's block size) at a
//! time, so only the piece right after each wrap-around needs the external-dictionary path.
//!
//! This is the one module that calls zstd's C API directly (`unsafe`): the safe crates do not expose
//! the buffer-less functions. Every call is checked with `ZSTD_isError`.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io::{self, Write};
use std::ptr::NonNull;
use zstd_sys as sys;

/// Input compressed per call: a multiple of zstd's 128 KiB block size, so blocks are never cut short.
const PIECE: usize = 1 << 20;

/// Compresses everything written into one zstd frame written to `inner`; [`ZstdRingWriter::finish`]
/// ends the frame.
pub(crate) struct ZstdRingWriter<W: Write> {
    cctx: Context,
    /// Input; `ring[start..end]` is written but not yet compressed, everything before `start` (back to
    /// one window) is what zstd may still reference. Allocated once at its full `cap` and never
    /// reallocated (zstd keeps pointers into it), but filled by appending on the first lap instead of
    /// being zeroed up front: a 20 KiB NAR touches 20 KiB of it, not the 2+ MiB a zeroed ring cost
    /// (memset was 8–9% of a small-path drain's CPU).
    ring: Vec<u8>,
    /// The ring's size: `ring.len()` grows to it on the first lap.
    cap: usize,
    start: usize,
    end: usize,
    /// Compressed output of one call; grown (zeroed) to the bound of the largest piece compressed
    /// so far, so a small NAR does not clear the 1 MiB a full piece needs.
    out: Vec<u8>,
    inner: W,
}

impl<W: Write> ZstdRingWriter<W> {
    /// Starts a frame at compression `level` (content size unknown, no checksum: Nix checks NarHash).
    /// `size_hint` is the expected input size (`u64::MAX`: unknown): zstd sizes its window and match
    /// tables to it, so a 20 KiB NAR does not set up (and clear) the ~1 MiB of tables of a level-3
    /// stream of unknown size. More input than hinted still makes a valid frame, compressed less well.
    pub fn new(inner: W, level: i32, size_hint: u64) -> io::Result<Self> {
        // SAFETY: plain value-returning calls without pointers.
        let mut params = unsafe { sys::ZSTD_getParams(level, size_hint, 0) };
        params.fParams = sys::ZSTD_frameParameters { contentSizeFlag: 0, checksumFlag: 0, noDictIDFlag: 0 };
        let window = 1usize << params.cParams.windowLog;
        let cap = (4 * window).max(window + 2 * PIECE);
        // SAFETY: allocates a context we own; null means out of memory.
        let cctx = NonNull::new(unsafe { sys::ZSTD_createCCtx() })
            .map(Context)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "zstd: cannot allocate a context"))?;
        let writer = Self { cctx, ring: Vec::with_capacity(cap), cap, start: 0, end: 0, out: Vec::new(), inner };
        // SAFETY: the context is valid and exclusively ours.
        check(
            unsafe {
                sys::ZSTD_compressBegin_advanced(
                    writer.cctx.0.as_ptr(),
                    std::ptr::null(),
                    0,
                    params,
                    sys::ZSTD_CONTENTSIZE_UNKNOWN as u64,
                )
            },
            "starting a frame",
        )?;
        Ok(writer)
    }

    /// Compresses the pending input and writes the result out.
    fn compress_pending(&mut self) -> io::Result<()> {
        if self.start == self.end {
            return Ok(());
        }
        // SAFETY: a plain value-returning call.
        let bound = unsafe { sys::ZSTD_compressBound(self.end - self.start) } + sys::ZSTD_FRAMEHEADERSIZE_MAX as usize;
        if self.out.len() < bound {
            self.out.resize(bound, 0);
        }
        let src = &self.ring[self.start..self.end];
        // SAFETY: `src` and `out` are live buffers of the given lengths; `out` holds compressBound of
        // this input plus a frame header, the most one call can produce. zstd may reference up to a window
        // of earlier input: it is still in the ring, which `write` never overwrites within a window
        // (the ring is at least a window plus two pieces and is filled strictly in order).
        let n = check(
            unsafe {
                sys::ZSTD_compressContinue(
                    self.cctx.0.as_ptr(),
                    self.out.as_mut_ptr().cast(),
                    self.out.len(),
                    src.as_ptr().cast(),
                    src.len(),
                )
            },
            "compressing",
        )?;
        self.start = self.end;
        self.inner.write_all(&self.out[..n])
    }

    /// Ends the frame and gives the inner writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.compress_pending()?;
        // SAFETY: a plain value-returning call.
        let bound = unsafe { sys::ZSTD_compressBound(0) } + sys::ZSTD_FRAMEHEADERSIZE_MAX as usize;
        if self.out.len() < bound {
            self.out.resize(bound, 0);
        }
        // SAFETY: as in `compress_pending`, with no new input.
        let n = check(
            unsafe {
                sys::ZSTD_compressEnd(
                    self.cctx.0.as_ptr(),
                    self.out.as_mut_ptr().cast(),
                    self.out.len(),
                    std::ptr::null(),
                    0,
                )
            },
            "ending the frame",
        )?;
        self.inner.write_all(&self.out[..n])?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> ZstdRingWriter<W> {
    /// Gives the inner writer back without ending the frame (the output is then incomplete: for
    /// aborting it).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for ZstdRingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.end == self.cap {
            // Wrap: the oldest bytes are at the start, more than a window behind `end`.
            self.start = 0;
            self.end = 0;
        }
        let room = (PIECE - (self.end - self.start)).min(self.cap - self.end);
        let n = data.len().min(room);
        if self.end == self.ring.len() {
            // First lap: append (within the capacity reserved in `new`, so the buffer never moves).
            self.ring.extend_from_slice(&data[..n]);
        } else {
            self.ring[self.end..self.end + n].copy_from_slice(&data[..n]);
        }
        self.end += n;
        if self.end - self.start == PIECE || self.end == self.cap {
            self.compress_pending()?;
        }
        Ok(n)
    }

    /// Compressed bytes go out a piece at a time; the frame only ends in [`ZstdRingWriter::finish`].
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A compression context, freed when dropped.
struct Context(NonNull<sys::ZSTD_CCtx>);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was created in `new` and is freed exactly once, here.
        unsafe { sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

/// The byte count of a zstd call, or its error named with what we were doing.
fn check(code: usize, doing: &str) -> io::Result<usize> {
    // SAFETY: ZSTD_isError and ZSTD_getErrorName accept any code; the name is a static C string.
    unsafe {
        if sys::ZSTD_isError(code) == 0 {
            return Ok(code);
        }
        let name = CStr::from_ptr(sys::ZSTD_getErrorName(code)).to_string_lossy();
        Err(io::Error::other(format!("zstd: {doing}: {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], piece: usize) -> Vec<u8> {
        let mut w = ZstdRingWriter::new(Vec::new(), 3, u64::MAX).expect("encoder");
        for part in data.chunks(piece.max(1)) {
            w.write_all(part).expect("write");
        }
        w.finish().expect("finish")
    }

    /// Pseudo-random bytes (xorshift), incompressible on their own.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    /// Noise where every 512 KiB block repeats the one 1.5 MiB earlier: compressible only through
    /// matches up to 1.5 MiB back, i.e. across the ring's wrap-arounds too. 40 MiB = five rings.
    fn repeating(len: usize) -> Vec<u8> {
        let block = 512 << 10;
        let mut v = noise(3 * block, 1);
        while v.len() < len {
            let from = v.len() - 3 * block;
            let copy = v[from..from + block].to_vec();
            v.extend_from_slice(&copy);
        }
        v.truncate(len);
        v
    }

    #[test]
    fn round_trips_across_wraps_in_any_write_size() {
        let data = repeating(40 << 20);
        for piece in [1, 4093, 1 << 20, 3 << 20, data.len()] {
            if piece == 1 {
                // Byte-at-a-time writes over a smaller input: the same code path, less time.
                let small = &data[..3 << 20];
                assert_eq!(zstd::decode_all(&compress(small, 1)[..]).expect("decode"), small);
                continue;
            }
            let frame = compress(&data, piece);
            assert_eq!(zstd::decode_all(&frame[..]).expect("decode"), data, "write size {piece}");
            // Only the first 1.5 MiB is new: matches must reach back across every wrap-around.
            assert!(frame.len() < 4 << 20, "write size {piece}: {} bytes", frame.len());
        }
    }

    #[test]
    fn every_accepted_level_round_trips_and_higher_levels_compress_more() {
        let text: Vec<u8> =
            (0..200_000u32).flat_map(|i| format!("entry {} -> {}\n", i % 977, i % 131).into_bytes()).collect();
        let mut sizes = Vec::new();
        for level in 1..=crate::nar_stream::MAX_ZSTD_LEVEL {
            let mut w = ZstdRingWriter::new(Vec::new(), level, u64::MAX).expect("encoder");
            w.write_all(&text).expect("write");
            let frame = w.finish().expect("finish");
            assert_eq!(zstd::decode_all(&frame[..]).expect("decode"), text, "level {level}");
            sizes.push(frame.len());
        }
        assert!(sizes[0] > sizes[sizes.len() - 1], "level 1 vs 9: {sizes:?}");
    }

    #[test]
    fn incompressible_input_stays_within_bounds() {
        let data = noise(9 << 20, 7);
        let frame = compress(&data, 65536);
        assert!(frame.len() < data.len() + data.len() / 100, "{}", frame.len());
        assert_eq!(zstd::decode_all(&frame[..]).expect("decode"), data);
    }

    #[test]
    fn empty_input_is_one_valid_empty_frame() {
        let frame = compress(b"", 1);
        assert!(!frame.is_empty());
        assert_eq!(zstd::decode_all(&frame[..]).expect("decode"), b"");
    }

    #[test]
    fn inner_write_errors_surface() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "no room"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = ZstdRingWriter::new(Full, 3, u64::MAX).expect("encoder");
        let written = w.write_all(&repeating(3 << 20));
        let err = written.and_then(|()| w.finish().map(|_| ())).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn zstd_errors_name_what_failed() {
        let err = check(usize::MAX - 10, "compressing").expect_err("an error code");
        assert!(err.to_string().starts_with("zstd: compressing: "), "{err}");
    }

    #[test]
    fn a_size_hint_below_the_input_still_makes_a_frame_that_decodes_to_it() {
        // 5 MiB: a 100 KiB pseudo-random block repeated, so matches lie farther back than a small window.
        let block: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let data: Vec<u8> = block.iter().copied().cycle().take(5 << 20).collect();
        let mut sizes = Vec::new();
        for hint in [0, 20_000, data.len() as u64, u64::MAX] {
            let mut w = ZstdRingWriter::new(Vec::new(), 3, hint).expect("encoder");
            w.write_all(&data).expect("write");
            let out = w.finish().expect("finish");
            assert_eq!(zstd::stream::decode_all(&out[..]).expect("decode"), data, "hint {hint}");
            sizes.push(out.len());
        }
        assert!(sizes[1] > sizes[2], "a window sized for 20 kB cannot reach the repeats: {sizes:?}");
    }
}
