//! Image file -> `pixel_values` (spec/multimodal.md §1.1): decode to 8-bit RGB, resize to
//! `768 x 768` with PIL's antialiased bilinear resampler, rescale by `1/255`, planar R, G, B.
//!
//! The reference is transformers 5.24's `SiglipImageProcessor` (the deprecated alias
//! `SiglipImageProcessorFast`, torchvision backend) fed a `PIL.Image.open(path)` image. Every
//! step below states what that reference does and how it is matched:
//!
//! - **Decoding** uses the `image` crate (format from the content, never the extension; GIF:
//!   first frame; EXIF orientation and ICC profiles ignored, as Pillow's `open` does). PNG
//!   (all colour types and bit depths, interlaced), WebP (lossless and, on the fixture, lossy),
//!   GIF and BMP decode to the same pixels as Pillow. JPEG goes through zune-jpeg, which is not
//!   bit-identical to Pillow's libjpeg-turbo (IDCT/upsampling rounding: up to a few LSB on a
//!   few % of the values; numbers in tools/reference/README.md). A JPEG without its
//!   end-of-image marker is refused, as Pillow does ("image file is truncated"). Not checked
//!   against Pillow (may differ): CMYK JPEGs, GIFs whose first frame does not cover the
//!   logical screen, 16-bit RGB PNGs with a colour key, 32-bit BMPs with an alpha bitfield.
//! - **To RGB** (`transformers.image_transforms.convert_to_rgb`, PIL branch): if the PIL image
//!   has an alpha band or a `transparency` entry (palette/grey/RGB colour key), it is converted
//!   to RGBA and `PIL.Image.alpha_composite`d over opaque white, then converted to RGB;
//!   otherwise `image.convert("RGB")` (grey replicated). Pillow's composite is integer
//!   arithmetic (AlphaComposite.c, 7 extra bits, rounded divisions by 255); [`over_white`] is a
//!   transcription. With an opaque white background it equals `round(c*a/255 + 255 - a)` for
//!   all 65536 `(c, a)` pairs (checked by the fixture script), so alpha 0 gives white and
//!   alpha 255 leaves the colour unchanged. (The tensor branch of transformers, used for numpy
//!   or torch inputs, instead computes `rgb*a + (1-a)` in float and truncates; it is not what
//!   a file opened with PIL goes through.)
//! - **16-bit PNGs**: Pillow keeps the high byte of 16-bit RGB, RGBA and grey+alpha samples
//!   (`v >> 8`), but opens 16-bit greyscale as mode `I;16`, whose conversion to RGB *clips*
//!   (`min(v, 255)`, so almost every pixel is 255). Both are reproduced: that is what the
//!   reference model sees.
//! - **Resize**: a transcription of Pillow 13's `ImagingResample` (Resample.c) for
//!   `BILINEAR`: triangle filter whose support grows with the downscale factor, coefficients
//!   normalised in f64 then rounded to 22-bit fixed point, a horizontal and a vertical pass
//!   (horizontal first unless the height shrinks by more than twice what the width does),
//!   each clipped to u8. It equals `PIL.Image.resize((768, 768), BILINEAR)` bit for bit. The
//!   reference uses torchvision's uint8 antialiased bilinear kernel instead, which differs from Pillow by
//!   at most 1 LSB on a small fraction of values.
//! - **Rescale**: torch computes `uint8_tensor * (1/255)` as `f32(v) * f32(1/255)`; so do we
//!   (this differs from the correctly rounded `v/255` for 126 of the 256 values).
//!
//! Limits: at most [`MAX_IMAGE_SIDE`] pixels per side and [`MAX_IMAGE_PIXELS`] pixels, checked
//! against the header before any pixel is decoded; the decoder itself runs under an
//! `image::Limits` allocation cap of [`MAX_DECODE_ALLOC`] bytes, so a header that lies cannot
//! make it allocate more.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat};
use rayon::prelude::*;

/// The side of the square image the vision tower takes.
pub const IMAGE_SIZE: usize = 768;
/// Largest accepted width or height, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Largest accepted `width * height` (64 Mi pixels, e.g. 8192 x 8192).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;
/// Cap on what the decoder may allocate: the largest accepted image at 16-bit RGBA.
pub const MAX_DECODE_ALLOC: u64 = MAX_IMAGE_PIXELS * 8;

/// Pillow's `PRECISION_BITS` for 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// The tower's input: `3 x size x size` f32, planes R, G, B, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub size: usize,
    pub data: Vec<f32>,
}

/// A decoded image, 8-bit RGB interleaved, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Why an image could not be turned into pixel values.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Any other error of [`load_image`], with the file it came from.
    #[error("image file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ImageError>,
    },
    #[error("image data is empty (0 bytes)")]
    Empty,
    #[error("unknown image format (supported: PNG, JPEG, WebP, GIF, BMP); first bytes: {head}")]
    UnknownFormat { head: String },
    #[error("unsupported image: {detail} (supported: PNG, JPEG, WebP, GIF, BMP)")]
    Unsupported { detail: String },
    #[error("corrupt or truncated {format} image: {message}")]
    Corrupt {
        format: &'static str,
        message: String,
    },
    #[error(
        "image too large: {width}x{height} pixels (limit: {MAX_IMAGE_SIDE} per side and \
         {MAX_IMAGE_PIXELS} pixels in total)"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("image has zero size ({width}x{height})")]
    ZeroSized { width: u32, height: u32 },
}

impl ImageError {
    /// The error itself, without the file wrapper that [`load_image`] adds.
    pub fn cause(&self) -> &ImageError {
        match self {
            ImageError::InFile { source, .. } => source.cause(),
            e => e,
        }
    }
}

/// Decodes an image file (PNG, JPEG, WebP, GIF first frame, BMP; format from the content, not
/// the extension) and preprocesses it to `3 x 768 x 768`.
pub fn load_image(path: &Path) -> Result<PixelValues, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    preprocess_bytes(&bytes, IMAGE_SIZE).map_err(|e| ImageError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Decodes an encoded image and preprocesses it to `3 x size x size`.
pub fn preprocess_bytes(bytes: &[u8], size: usize) -> Result<PixelValues, ImageError> {
    let img = decode_rgb8(bytes)?;
    let resized = resize_rgb8(&img.data, img.width, img.height, size);
    Ok(rescale_planar(&resized, size))
}

/// `[size, size, 3]` u8 -> planar f32 `[3, size, size]`, `f32(v) * f32(1/255)` as torch does.
pub fn rescale_planar(rgb: &[u8], size: usize) -> PixelValues {
    let plane = size * size;
    assert_eq!(
        rgb.len(),
        plane * 3,
        "rescale_planar: buffer is not {size}x{size}x3"
    );
    // torch: uint8 tensor * python float -> float32 result, scalar cast to f32.
    let scale = (1.0f64 / 255.0) as f32;
    let mut data = vec![0f32; plane * 3];
    let (r, gb) = data.split_at_mut(plane);
    let (g, b) = gb.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 * scale;
        g[i] = px[1] as f32 * scale;
        b[i] = px[2] as f32 * scale;
    }
    PixelValues { size, data }
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

/// Decodes an encoded image to 8-bit RGB the way `convert_to_rgb(PIL.Image.open(..))` of
/// transformers sees it (see the module documentation for alpha and 16-bit samples).
pub fn decode_rgb8(bytes: &[u8]) -> Result<Rgb8Image, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat {
        head: bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    })?;
    if !matches!(
        format,
        ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
    ) {
        return Err(ImageError::Unsupported {
            detail: format!("format {format:?}"),
        });
    }
    let name = format_name(format);
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    // The decoders are third-party code fed untrusted bytes: a panic in one of them is
    // reported as a corrupt image rather than taking the process down.
    let decoded = std::panic::catch_unwind(|| decode_dynamic(bytes, format)).map_err(|_| {
        ImageError::Corrupt {
            format: name,
            message: "the decoder failed on malformed data".to_string(),
        }
    })??;
    // Pillow opens 16-bit greyscale PNGs as mode I;16, whose RGB conversion clips.
    let png_grey16 =
        format == ImageFormat::Png && bytes.len() > 25 && bytes[24] == 16 && bytes[25] == 0;
    Ok(to_rgb8(decoded, png_grey16))
}

fn decode_dynamic(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage, ImageError> {
    let name = format_name(format);
    let map = |e: image::ImageError| map_image_error(e, name);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    // Width/height limits are checked below, against our own error, from the header.
    limits.max_image_width = None;
    limits.max_image_height = None;
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.clone());
    let decoder = reader.into_decoder().map_err(map)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized { width, height });
    }
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(ImageError::TooLarge { width, height });
    }
    limits
        .reserve(decoder.total_bytes())
        .map_err(|_| ImageError::TooLarge { width, height })?;
    DynamicImage::from_decoder(decoder).map_err(map)
}

fn map_image_error(e: image::ImageError, format: &'static str) -> ImageError {
    use image::ImageError as E;
    match e {
        E::Unsupported(u) => ImageError::Unsupported {
            detail: u.to_string(),
        },
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Corrupt {
            format,
            message: format!("truncated data ({io})"),
        },
        e => ImageError::Corrupt {
            format,
            message: e.to_string(),
        },
    }
}

/// zune-jpeg (as configured by the `image` crate, non-strict) decodes a truncated JPEG to a
/// grey-filled image without an error. Pillow refuses such a file ("image file is
/// truncated"), and a half-grey picture must not reach the model: require the end-of-image
/// marker after the last start-of-scan marker. (Inside entropy-coded data every 0xFF byte is
/// followed by 0x00 or a restart marker, so FF D9 there is the real EOI.)
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), ImageError> {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let complete = match last_sos {
        Some(p) => bytes[p..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    };
    if complete {
        Ok(())
    } else {
        Err(ImageError::Corrupt {
            format: "JPEG",
            message: "truncated data (no end-of-image marker after the image data)".to_string(),
        })
    }
}

/// Pillow's `alpha_composite(white, (c, a))` for one channel (AlphaComposite.c with an opaque
/// white destination), i.e. `round(c*a/255 + 255 - a)`.
#[inline]
pub fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const PB: u32 = 7;
    let (c, a) = (u32::from(c), u32::from(a));
    let blend = 255 * (255 - a); // dst alpha 255
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PB);
    ((((tmp >> 8) + tmp) >> 8) >> PB) as u8
}

fn to_rgb8(img: DynamicImage, png_grey16: bool) -> Rgb8Image {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(width * height * 3);
    let hi = |v: u16| (v >> 8) as u8;
    // Pillow mode I;16 -> RGB clips; every other 16-bit mode keeps the high byte.
    let grey16 = |v: u16| if png_grey16 { v.min(255) as u8 } else { hi(v) };
    match img {
        DynamicImage::ImageRgb8(b) => data = b.into_raw(),
        DynamicImage::ImageLuma8(b) => {
            for &l in b.as_raw() {
                data.extend_from_slice(&[l, l, l]);
            }
        }
        DynamicImage::ImageLumaA8(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let v = over_white(p[0], p[1]);
                data.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgba8(b) => {
            for p in b.as_raw().chunks_exact(4) {
                data.extend_from_slice(&[
                    over_white(p[0], p[3]),
                    over_white(p[1], p[3]),
                    over_white(p[2], p[3]),
                ]);
            }
        }
        DynamicImage::ImageLuma16(b) => {
            for &l in b.as_raw() {
                let v = grey16(l);
                data.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA16(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let v = over_white(grey16(p[0]), hi(p[1]));
                data.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgb16(b) => data.extend(b.as_raw().iter().map(|&v| hi(v))),
        DynamicImage::ImageRgba16(b) => {
            for p in b.as_raw().chunks_exact(4) {
                let a = hi(p[3]);
                data.extend_from_slice(&[
                    over_white(hi(p[0]), a),
                    over_white(hi(p[1]), a),
                    over_white(hi(p[2]), a),
                ]);
            }
        }
        // Float layouts (not produced by the enabled decoders): the `image` crate's 8-bit
        // conversion, then the same composite.
        other => {
            for p in other.to_rgba8().as_raw().chunks_exact(4) {
                data.extend_from_slice(&[
                    over_white(p[0], p[3]),
                    over_white(p[1], p[3]),
                    over_white(p[2], p[3]),
                ]);
            }
        }
    }
    Rgb8Image {
        width,
        height,
        data,
    }
}

// ---------------------------------------------------------------------------------------------
// Resampling: Pillow's ImagingResample (libImaging/Resample.c), BILINEAR, 8 bits per channel.

/// Per output position: first input index, number of taps, and the taps' fixed-point weights
/// (`ksize` slots per position, unused ones zero).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `(0, in_size)`.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // The box is C `float`; exact for any accepted size.
    let (in0, in1) = (0f32, in_size as f32);
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 1.0 * filterscale; // BILINEAR support 1.0
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = bilinear_filter(((x + xmin) as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for (kx, &wx) in row.iter_mut().zip(&w).take(n) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let f = v * f64::from(1u32 << PRECISION_BITS);
            *kx = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, k }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over the rows `rows` of `src` (`w` pixels wide) into `out_w` columns.
fn resample_horizontal(
    src: &[u8],
    w: usize,
    rows: std::ops::Range<usize>,
    out_w: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let mut out = vec![0u8; rows.len() * out_w * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    out.par_chunks_mut(out_w * 3)
        .zip(rows)
        .for_each(|(orow, y)| {
            let irow = &src[y * w * 3..(y + 1) * w * 3];
            for (xx, o) in orow.chunks_exact_mut(3).enumerate() {
                let (xmin, n) = c.bounds[xx];
                let k = &c.k[xx * c.ksize..xx * c.ksize + n];
                let px = &irow[xmin * 3..(xmin + n) * 3];
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (&kx, p) in k.iter().zip(px.chunks_exact(3)) {
                    s0 += i32::from(p[0]) * kx;
                    s1 += i32::from(p[1]) * kx;
                    s2 += i32::from(p[2]) * kx;
                }
                o[0] = clip8(s0);
                o[1] = clip8(s1);
                o[2] = clip8(s2);
            }
        });
    out
}

/// Vertical pass: `src` has `h` rows of `row_len` bytes, the coefficients' bounds are relative
/// to its first row.
fn resample_vertical(src: &[u8], row_len: usize, out_h: usize, c: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; out_h * row_len];
    let half = 1i32 << (PRECISION_BITS - 1);
    out.par_chunks_mut(row_len).enumerate().for_each_init(
        || vec![0i32; row_len],
        |acc, (yy, orow)| {
            let (ymin, n) = c.bounds[yy];
            let k = &c.k[yy * c.ksize..yy * c.ksize + n];
            acc.fill(half);
            for (y, &ky) in k.iter().enumerate() {
                let irow = &src[(ymin + y) * row_len..(ymin + y + 1) * row_len];
                for (a, &p) in acc.iter_mut().zip(irow) {
                    *a += i32::from(p) * ky;
                }
            }
            for (o, &a) in orow.iter_mut().zip(acc.iter()) {
                *o = clip8(a);
            }
        },
    );
    out
}

/// Pillow's `Image.resize((out_w, out_h), BILINEAR)` of an RGB image, bit for bit.
///
/// Panics if `rgb.len() != w * h * 3` or a size is zero (a caller bug, not bad input).
pub fn resize_rgb8_to(rgb: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    assert!(
        w > 0 && h > 0 && out_w > 0 && out_h > 0,
        "resize of an empty image"
    );
    assert_eq!(rgb.len(), w * h * 3, "resize_rgb8: buffer is not {w}x{h}x3");
    let need_h = out_w != w;
    let need_v = out_h != h;
    // Pillow 13's ImagingResampleInner: "if height is being scaled down more than twice
    // the amount the width is, run the vertical pass first". The order changes the result
    // (each pass rounds to u8), so it is part of the algorithm.
    let (dh, dw) = (h as i64 - out_h as i64, w as i64 - out_w as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    match (need_h, need_v) {
        (false, false) => rgb.to_vec(),
        (false, true) => resample_vertical(rgb, w * 3, out_h, &precompute_coeffs(h, out_h)),
        (true, false) => resample_horizontal(rgb, w, 0..h, out_w, &precompute_coeffs(w, out_w)),
        (true, true) if horizontal_first => {
            let mut vert = precompute_coeffs(h, out_h);
            // Only the input rows the vertical pass reads go through the horizontal pass.
            let first = vert.bounds[0].0;
            let last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
            for b in &mut vert.bounds {
                b.0 -= first;
            }
            let tmp = resample_horizontal(rgb, w, first..last, out_w, &precompute_coeffs(w, out_w));
            resample_vertical(&tmp, out_w * 3, out_h, &vert)
        }
        (true, true) => {
            let tmp = resample_vertical(rgb, w * 3, out_h, &precompute_coeffs(h, out_h));
            resample_horizontal(&tmp, w, 0..out_h, out_w, &precompute_coeffs(w, out_w))
        }
    }
}

/// The resized 8-bit RGB image before rescaling (`[size, size, 3]` interleaved): Pillow's
/// `Image.resize((size, size), BILINEAR)`, bit for bit.
pub fn resize_rgb8(rgb: &[u8], w: usize, h: usize, size: usize) -> Vec<u8> {
    resize_rgb8_to(rgb, w, h, size, size)
}
