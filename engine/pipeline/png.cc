#include "engine/pipeline/png.h"

#include <png.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace fluxserve {
namespace {

// libpng reports errors by longjmp; these handlers turn them into a message we can return.
struct PngError {
  std::string message;
};
void on_error(png_structp png, png_const_charp msg) {
  static_cast<PngError*>(png_get_error_ptr(png))->message = msg;
  png_longjmp(png, 1);
}
void on_warning(png_structp, png_const_charp) {}

void append(png_structp png, png_bytep data, png_size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), n);
}
void flush(png_structp) {}

struct Reader {
  const std::string* bytes;
  size_t pos = 0;
};
void read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<Reader*>(png_get_io_ptr(png));
  if (r->pos + n > r->bytes->size()) png_error(png, "PNG data is truncated");
  std::memcpy(out, r->bytes->data() + r->pos, n);
  r->pos += n;
}

}  // namespace

absl::StatusOr<std::string> encode_png(const Image& image, const PngText& text) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != static_cast<size_t>(image.width * image.height * 3)) {
    return absl::InvalidArgumentError(absl::StrCat("encode_png: image ", image.width, "x",
                                                   image.height, " with ", image.rgb.size(),
                                                   " bytes is not 8-bit RGB"));
  }
  PngError err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
  if (png == nullptr) return absl::ResourceExhaustedError("encode_png: out of memory");
  png_infop info = png_create_info_struct(png);
  std::string out;
  std::vector<png_text> chunks;
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return absl::InternalError(absl::StrCat("encode_png: ", err.message));
  }
  png_set_write_fn(png, &out, append, flush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(image.width),
               static_cast<png_uint_32>(image.height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  // iTXt (UTF-8) rather than tEXt (Latin-1): prompts are arbitrary Unicode.
  chunks.resize(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    chunks[i] = png_text{};
    chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(text[i].first.c_str());
    chunks[i].text = const_cast<char*>(text[i].second.c_str());
    chunks[i].itxt_length = text[i].second.size();
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  for (int64_t y = 0; y < image.height; ++y) {
    png_write_row(png, const_cast<png_bytep>(image.rgb.data() + y * image.width * 3));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

absl::Status write_png(const std::string& path, const Image& image, const PngText& text) {
  absl::StatusOr<std::string> bytes = encode_png(image, text);
  if (!bytes.ok()) return bytes.status();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
    if (!f) return absl::InternalError(absl::StrCat(path, ": cannot write PNG"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<Image> decode_png(const std::string& bytes, PngText* text) {
  if (bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8)) {
    return absl::InvalidArgumentError("decode_png: not a PNG file");
  }
  PngError err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
  if (png == nullptr) return absl::ResourceExhaustedError("decode_png: out of memory");
  png_infop info = png_create_info_struct(png);
  Reader reader{&bytes};
  Image img;
  std::vector<png_bytep> rows;
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::InvalidArgumentError(absl::StrCat("decode_png: ", err.message));
  }
  png_set_read_fn(png, &reader, read_bytes);
  png_read_info(png, info);
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  png_set_gray_to_rgb(png);
  png_read_update_info(png, info);
  img.width = png_get_image_width(png, info);
  img.height = png_get_image_height(png, info);
  if (img.width * img.height > (int64_t{1} << 28)) png_error(png, "image too large");
  img.rgb.resize(static_cast<size_t>(img.width * img.height * 3));
  rows.resize(static_cast<size_t>(img.height));
  for (int64_t y = 0; y < img.height; ++y) rows[y] = img.rgb.data() + y * img.width * 3;
  png_read_image(png, rows.data());
  png_read_end(png, info);
  if (text != nullptr) {
    png_textp t = nullptr;
    int n = 0;
    png_get_text(png, info, &t, &n);
    for (int i = 0; i < n; ++i) text->emplace_back(t[i].key, t[i].text ? t[i].text : "");
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
}

}  // namespace fluxserve
