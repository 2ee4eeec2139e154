//! A minimal PNG encoder (8-bit RGB, zlib via `flate2`), so that writing a
//! figure needs no image library and every write failure is a plain
//! `std::io::Error`.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Encodes `rgb` (`width * height * 3` bytes, rows top to bottom) as a PNG.
/// Each row uses the `Sub` filter when that makes it more compressible (flat
/// regions and gradients), `None` otherwise.
pub(crate) fn encode_rgb8(width: u32, height: u32, rgb: &[u8]) -> std::io::Result<Vec<u8>> {
    let stride = width as usize * 3;
    if width == 0 || height == 0 || rgb.len() != stride * height as usize {
        return Err(std::io::Error::other(format!(
            "PNG encoder: {} bytes for a {width} x {height} RGB image",
            rgb.len()
        )));
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    let mut row = vec![0u8; stride + 1];
    for r in rgb.chunks_exact(stride) {
        // Heuristic of the PNG spec: the filter with the smallest sum of |signed byte|.
        let cost_none: u64 = r.iter().map(|&b| (b as i8).unsigned_abs() as u64).sum();
        let mut cost_sub = 0u64;
        for i in 0..stride {
            let left = if i >= 3 { r[i - 3] } else { 0 };
            cost_sub += (r[i].wrapping_sub(left) as i8).unsigned_abs() as u64;
        }
        if cost_sub < cost_none {
            row[0] = 1;
            for i in 0..stride {
                let left = if i >= 3 { r[i - 3] } else { 0 };
                row[i + 1] = r[i].wrapping_sub(left);
            }
        } else {
            row[0] = 0;
            row[1..].copy_from_slice(r);
        }
        z.write_all(&row)?;
    }
    let idat = z.finish()?;

    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(&SIGNATURE);
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // bit depth 8, colour type 2 (RGB), compression 0, filter 0, no interlace
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = Crc32::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finish().to_be_bytes());
}

/// CRC-32 (IEEE, reflected, as PNG uses).
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xffff_ffff)
    }
    fn update(&mut self, data: &[u8]) {
        let table = crc_table();
        for &b in data {
            self.0 = table[((self.0 ^ b as u32) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }
    fn finish(&self) -> u32 {
        self.0 ^ 0xffff_ffff
    }
}

fn crc_table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, e) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_string() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xcbf4_3926);
    }

    #[test]
    fn iend_chunk_crc() {
        let mut out = Vec::new();
        chunk(&mut out, b"IEND", &[]);
        assert_eq!(
            out,
            [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]
        );
    }

    #[test]
    fn rejects_wrong_buffer_size() {
        assert!(encode_rgb8(2, 2, &[0; 11]).is_err());
        assert!(encode_rgb8(0, 2, &[]).is_err());
    }
}
