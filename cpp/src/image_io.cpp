// PNG (libpng) and JPEG (libjpeg-turbo) decoding to 8-bit RGB with the conversions of
// dit_deploy.preprocess.load_image (Pillow), EXIF orientation included; mask PNG writing.
//
// libpng and libjpeg report errors with longjmp: the functions that call setjmp below hold no
// C++ object with a destructor, and the caller owns the output buffers.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

// clang-format off
#include <png.h>
#include <jpeglib.h>
// clang-format on

#include "dit/errors.hpp"
#include "dit/image.hpp"
#include "dit/predictor.hpp"

namespace dit {
namespace {

constexpr int kMaxDim = 1 << 20;  // no dimension beyond 1M pixels (and the pixel-count guard)

// ------------------------------------------------------------------------------- EXIF
/// Orientation tag (0x0112) of a TIFF-structured EXIF block ("II*\0" / "MM\0*"), 1 when absent.
int exif_orientation(const uint8_t* p, std::size_t n) {
  if (n >= 6 && std::memcmp(p, "Exif\0\0", 6) == 0) {
    p += 6;
    n -= 6;
  }
  if (n < 8) return 1;
  bool le;
  if (p[0] == 'I' && p[1] == 'I') {
    le = true;
  } else if (p[0] == 'M' && p[1] == 'M') {
    le = false;
  } else {
    return 1;
  }
  auto u16 = [&](std::size_t o) -> unsigned {
    return le ? unsigned(p[o]) | unsigned(p[o + 1]) << 8 : unsigned(p[o]) << 8 | unsigned(p[o + 1]);
  };
  auto u32 = [&](std::size_t o) -> unsigned long {
    return le ? (unsigned long)u16(o) | (unsigned long)u16(o + 2) << 16
              : (unsigned long)u16(o) << 16 | (unsigned long)u16(o + 2);
  };
  unsigned long ifd = u32(4);
  if (ifd + 2 > n) return 1;
  unsigned count = u16(ifd);
  for (unsigned i = 0; i < count; ++i) {
    std::size_t e = ifd + 2 + std::size_t(i) * 12;
    if (e + 12 > n) break;
    if (u16(e) == 0x0112) {
      unsigned type = u16(e + 2);
      unsigned v = type == 3 ? u16(e + 8) : (type == 4 ? unsigned(u32(e + 8)) : 1);
      return (v >= 1 && v <= 8) ? int(v) : 1;
    }
  }
  return 1;
}

/// PIL.ImageOps.exif_transpose for orientations 2..8.
void apply_orientation(Image& im, int orientation) {
  if (orientation <= 1 || orientation > 8) return;
  const int W = im.width, H = im.height;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? H : W;
  out.height = swap ? W : H;
  out.rgb.resize(im.rgb.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; sy = y; break;              // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;      // ROTATE_180
        case 4: sx = x; sy = H - 1 - y; break;              // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break;                      // TRANSPOSE
        case 6: sx = y; sy = H - 1 - x; break;              // ROTATE_270
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;      // TRANSVERSE
        case 8: sx = W - 1 - y; sy = x; break;              // ROTATE_90
        default: break;
      }
      const uint8_t* s = &im.rgb[(std::size_t(sy) * W + sx) * 3];
      uint8_t* d = &out.rgb[(std::size_t(y) * out.width + x) * 3];
      d[0] = s[0];
      d[1] = s[1];
      d[2] = s[2];
    }
  }
  im = std::move(out);
}

struct Decoded {
  Image image;
  int orientation = 1;
  char error[256] = {0};
  long long max_pixels = 0;
  bool too_large = false;
  bool zero_size = false;
};

bool check_dims(Decoded* d, unsigned long w, unsigned long h) {
  if (w == 0 || h == 0) {
    d->zero_size = true;
    return false;
  }
  if (w == 0 || h == 0 || w > kMaxDim || h > kMaxDim ||
      (long long)w * (long long)h > d->max_pixels) {
    d->image.width = int(w > kMaxDim ? kMaxDim : w);
    d->image.height = int(h > kMaxDim ? kMaxDim : h);
    d->too_large = true;
    std::snprintf(d->error, sizeof(d->error), "%lux%lu pixels", w, h);
    return false;
  }
  return true;
}

// -------------------------------------------------------------------------------- PNG
struct PngSource {
  const uint8_t* data;
  std::size_t size;
  std::size_t pos;
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (src->pos + n > src->size) png_error(png, "file is truncated");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

void png_on_error(png_structp png, png_const_charp msg) {
  auto* d = static_cast<Decoded*>(png_get_error_ptr(png));
  std::snprintf(d->error, sizeof(d->error), "%s", msg);
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

bool decode_png(const uint8_t* data, std::size_t size, Decoded* d, std::vector<png_bytep>* rows) {
  PngSource src{data, size, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, d, png_on_error, png_on_warning);
  if (!png) {
    std::snprintf(d->error, sizeof(d->error), "out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    return false;
  }
  png_set_read_fn(png, &src, png_read_mem);
  png_set_user_limits(png, kMaxDim, kMaxDim);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (!check_dims(d, w, h)) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  int color = png_get_color_type(png, info);
  int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);  // keeps the high byte: value >> 8
  if ((color & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) {
    png_set_strip_alpha(png);  // alpha (or palette transparency) is dropped, not composited
  }
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != std::size_t(w) * 3) {
    std::snprintf(d->error, sizeof(d->error), "unsupported PNG pixel layout");
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  d->image.width = int(w);
  d->image.height = int(h);
  d->image.rgb.resize(std::size_t(w) * h * 3);  // the caller owns it (no unwinding here)
  rows->resize(h);
  for (png_uint_32 y = 0; y < h; ++y) (*rows)[y] = &d->image.rgb[std::size_t(y) * w * 3];
  png_read_image(png, rows->data());
  png_read_end(png, info);
#ifdef PNG_eXIf_SUPPORTED
  png_bytep exif = nullptr;
  png_uint_32 exif_len = 0;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif && exif_len) {
    d->orientation = exif_orientation(exif, exif_len);
  }
#endif
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

// ------------------------------------------------------------------------------- JPEG
struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  Decoded* decoded;
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  char msg[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, msg);
  std::snprintf(err->decoded->error, sizeof(err->decoded->error), "%s", msg);
  longjmp(err->jump, 1);
}

void jpeg_on_message(j_common_ptr, int) {}  // warnings (e.g. premature end) stay silent

inline int muldiv255(int a, int b) {
  int tmp = a * b + 128;
  return ((tmp >> 8) + tmp) >> 8;
}

inline uint8_t clip8(int v) { return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v)); }

bool decode_jpeg(const uint8_t* data, std::size_t size, Decoded* d, std::vector<uint8_t>* row) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_on_error;
  err.mgr.emit_message = jpeg_on_message;
  err.decoded = d;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  if (!check_dims(d, cinfo.image_width, cinfo.image_height)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
        std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      d->orientation = exif_orientation(m->data, m->data_length);
      break;
    }
  }
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  const bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = cmyk ? JCS_CMYK : (gray ? JCS_GRAYSCALE : JCS_RGB);
  jpeg_start_decompress(&cinfo);
  const int W = int(cinfo.output_width), H = int(cinfo.output_height);
  const int nc = cinfo.output_components;
  const bool inverted = cmyk && cinfo.saw_Adobe_marker;  // Pillow's "CMYK;I"
  d->image.width = W;
  d->image.height = H;
  d->image.rgb.resize(std::size_t(W) * H * 3);
  row->resize(std::size_t(W) * nc);
  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = int(cinfo.output_scanline);
    JSAMPROW rp = row->data();
    jpeg_read_scanlines(&cinfo, &rp, 1);
    uint8_t* out = &d->image.rgb[std::size_t(y) * W * 3];
    const uint8_t* in = row->data();
    for (int x = 0; x < W; ++x) {
      if (nc == 1) {
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[x];
      } else if (nc == 3) {
        std::memcpy(out + 3 * x, in + 3 * x, 3);
      } else {  // CMYK -> RGB as Pillow's cmyk2rgb
        int c[4];
        for (int k = 0; k < 4; ++k) c[k] = inverted ? 255 - in[4 * x + k] : in[4 * x + k];
        const int nk = 255 - c[3];
        for (int k = 0; k < 3; ++k) out[3 * x + k] = clip8(nk - muldiv255(c[k], nk));
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

Image decode_image(const uint8_t* data, std::size_t size, const std::string& what,
                   long long max_pixels) {
  Decoded d;
  d.max_pixels = max_pixels;
  bool ok;
  std::string kind;
  if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
    kind = "PNG";
    std::vector<png_bytep> rows;
    ok = decode_png(data, size, &d, &rows);
  } else if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    kind = "JPEG";
    std::vector<uint8_t> row;
    ok = decode_jpeg(data, size, &d, &row);
  } else {
    throw ImageError("cannot decode " + what +
                     ": it is not a PNG or JPEG file (the C++ runtime decodes only those). "
                     "Convert it, or decode it yourself and pass RGB bytes to predict().");
  }
  if (!ok) {
    if (d.too_large) {
      throw ImageError(what + " has " + d.error + ", more than max_pixels=" +
                       std::to_string(max_pixels) +
                       " (decompression-bomb guard); downscale it or pass a larger max_pixels.");
    }
    if (d.zero_size) {
      throw ImageError(what + " has zero size; pass a non-empty image.");
    }
    throw ImageError("cannot decode " + what + " (" + kind + "): " + d.error +
                     ". It is corrupt or truncated; re-save or re-download it.");
  }
  apply_orientation(d.image, d.orientation);
  return std::move(d.image);
}

Image load_image(const std::string& path, long long max_pixels) {
  const std::string what = "image file " + path;
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ImageError("image file not found: " + path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.empty()) {
    throw ImageError("cannot decode " + what + ": the file is empty; re-save or re-download it.");
  }
  return decode_image(bytes.data(), bytes.size(), what, max_pixels);
}

namespace {
struct PngWriter {
  FILE* fp = nullptr;
  char error[256] = {0};
};

void png_write_error(png_structp png, png_const_charp msg) {
  auto* w = static_cast<PngWriter*>(png_get_error_ptr(png));
  std::snprintf(w->error, sizeof(w->error), "%s", msg);
  png_longjmp(png, 1);
}

bool write_png_rows(PngWriter* w, png_bytep* rows, int width, int height) {
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, w, png_write_error, png_on_warning);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, info ? &info : nullptr);
    return false;
  }
  png_init_io(png, w->fp);
  png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_GRAY,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}
}  // namespace

void save_mask_png(const std::string& path, const uint8_t* mask, int width, int height) {
  if (width <= 0 || height <= 0 || mask == nullptr) {
    throw InputError("save_mask_png needs a non-empty mask, got " + std::to_string(width) + "x" +
                     std::to_string(height));
  }
  std::vector<uint8_t> pixels(std::size_t(width) * height);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = mask[i] ? 255 : 0;
  std::vector<png_bytep> rows(static_cast<std::size_t>(height));
  for (int y = 0; y < height; ++y) rows[std::size_t(y)] = &pixels[std::size_t(y) * width];
  PngWriter w;
  w.fp = std::fopen(path.c_str(), "wb");
  if (!w.fp) {
    throw Error("cannot write " + path + ": " + std::strerror(errno) +
                "; check that its directory exists and is writable");
  }
  bool ok = write_png_rows(&w, rows.data(), width, height);
  ok = (std::fclose(w.fp) == 0) && ok;
  if (!ok) throw Error("cannot write " + path + ": " + w.error + "; is the disk full?");
}

}  // namespace dit
