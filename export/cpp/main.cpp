// unet_infer: segment images with an exported unet-deploy model from the command line.
//
//   unet_infer MODEL IMAGE... [--out DIR] [--device auto|cpu|cuda|cuda:N] [--min-area N] [--min-score S] [--threads N]
//              [--tile-scale S] [--overlap O] [--no-tile] [--save-input]
//
// Prints one JSON line per image (file, size, regions, timings; or file and error). With --out
// it also writes DIR/masks/<stem>.png (palette PNG, pixel = class id), DIR/overlays/<stem>.jpg
// and DIR/report.json, the layout of `unet-predict`; each image's entry names its "mask" and
// "overlay" relative to DIR. Exit code 0 when every image went through,
// 1 on a user error (one line on stderr) or when any image failed.
#include <clocale>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include <nlohmann/json.hpp>

#include "unet_infer.h"

namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "Usage: unet_infer MODEL IMAGE... [--out DIR] [--device auto|cpu|cuda|cuda:N] [--min-area N] [--min-score S] [--threads N]\n"
    "                  [--tile-scale S] [--overlap O] [--no-tile] [--save-input]\n"
    "\n"
    "  Segment IMAGE(s) with MODEL (model.torchscript.pt or an AOTInductor model.pt2 from unet-export),\n"
    "  preparing pixels exactly as the Python runtime does. One JSON line per image on stdout.\n"
    "\n"
    "  --out DIR       write DIR/masks/<stem>.png, DIR/overlays/<stem>.jpg and DIR/report.json\n"
    "  --device D      auto (CUDA when libtorch sees a GPU; default), cpu, cuda or cuda:N\n"
    "  --min-area N    drop regions smaller than N pixels (default 0)\n"
    "  --min-score S   drop regions whose score (mean probability of their class) is below S (default 0)\n"
    "  --threads N     CPU threads for inference (default: libtorch's, one per core)\n"
    "  --tile-scale S  tiled inference: resize by S (1.0 = native pixels), model-size tiles (overrides the metadata)\n"
    "  --overlap O     tile overlap, a fraction of a tile in [0, 1) (default: the metadata's, else 0.25)\n"
    "  --no-tile       letterbox the whole image even when the metadata asks for tiles\n"
    "  --save-input    also write DIR/inputs/<stem>.png: the letterboxed image the network sees\n"
    "\n"
    "Examples:\n"
    "  unet_infer runs/exp/model.torchscript.pt part1.png part2.png --out results\n"
    "  unet_infer model.pt2 images/*.jpg --min-area 50 > report.jsonl\n";

struct Options {
  std::string model, out, device = "auto";
  std::vector<std::string> images;
  int min_area = 0, threads = 0;
  double min_score = 0.0;
  bool save_input = false, no_tile = false;
  std::optional<double> tile_scale, overlap;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "Error: " << message << " (run unet_infer --help for the usage)\n";
  std::exit(1);
}

// The integer value of ``flag``, at least ``least``.
int count(const std::string& flag, const std::string& v, int least) {
  try {
    size_t used = 0;
    const int n = std::stoi(v, &used);
    if (used == v.size() && n >= least) return n;
  } catch (const std::exception&) {
  }
  usage_error(flag + " '" + v + "' is not an integer >= " + std::to_string(least));
}

// The number value of ``flag`` ("C" rules whatever the locale: a comma is not a decimal point).
double real(const std::string& flag, const std::string& v) {
  try {
    const nlohmann::json j = nlohmann::json::parse(v);
    if (j.is_number()) return j.get<double>();
  } catch (const std::exception&) {
  }
  usage_error(flag + " '" + v + "' is not a number");
}

Options parse_args(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const std::string& flag) -> std::string {
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (a == "--out" || a == "-o") {
      o.out = value(a);
    } else if (a == "--device") {
      o.device = value(a);
    } else if (a == "--min-area") {
      o.min_area = count(a, value(a), 0);
    } else if (a == "--min-score") {
      o.min_score = real(a, value(a));
      if (!(o.min_score >= 0.0 && o.min_score <= 1.0)) usage_error("--min-score must lie in [0, 1]");
    } else if (a == "--threads") {
      o.threads = count(a, value(a), 1);
    } else if (a == "--tile-scale") {
      o.tile_scale = real(a, value(a));
    } else if (a == "--overlap") {
      o.overlap = real(a, value(a));
    } else if (a == "--no-tile") {
      o.no_tile = true;
    } else if (a == "--save-input") {
      o.save_input = true;
    } else if (a.size() > 1 && a[0] == '-') {
      usage_error("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2) usage_error("give a MODEL and at least one IMAGE");
  if (o.save_input && o.out.empty()) usage_error("--save-input needs --out DIR");
  if (o.no_tile && (o.tile_scale || o.overlap)) usage_error("--no-tile cannot be combined with --tile-scale or --overlap");
  o.model = positional[0];
  o.images.assign(positional.begin() + 1, positional.end());
  return o;
}

std::vector<unsigned char> encode(const std::string& ext, const cv::Mat& img, const std::vector<int>& params = {}) {
  std::vector<unsigned char> bytes;
  if (!cv::imencode(ext, img, bytes, params)) throw unet::Error("OpenCV cannot encode a " + ext + " image");
  return bytes;
}

// A stem cut at a UTF-8 character boundary so that it and 10 bytes of suffixes (_123.jpeg) stay a
// legal file name (255 bytes), as unet_deploy.fileio.fit_stem cuts it.
std::string fit_stem(const std::string& stem) {
  const size_t room = 255 - 10;
  if (stem.size() <= room) return stem;
  size_t n = room;
  while (n > 0 && (static_cast<unsigned char>(stem[n]) & 0xC0) == 0x80) --n;  // not inside a character
  return stem.substr(0, n);
}

// ``<stem>`` per input for masks/<stem>.png; a repeated stem gets _1, _2, ... (as unet-predict).
std::vector<std::string> output_stems(const std::vector<std::string>& files) {
  std::set<std::string> seen;
  std::vector<std::string> stems;
  for (const auto& f : files) {
    const std::string base = fit_stem(fs::path(f).stem().string());
    std::string stem = base;
    for (int k = 1; seen.count(stem); ++k) stem = base + "_" + std::to_string(k);
    seen.insert(stem);
    stems.push_back(stem);
  }
  return stems;
}

// First line of an exception's message (libtorch appends backtraces).
std::string one_line(const std::exception& e) {
  std::string s = e.what();
  return s.substr(0, s.find('\n'));
}

}  // namespace

int main(int argc, char** argv) {
  // Take the user's locale, as host programs (Qt, ...) do: the library's JSON and numbers must not depend on it.
  std::setlocale(LC_ALL, "");
  const Options opt = parse_args(argc, argv);
  std::unique_ptr<unet::Segmenter> seg;
  try {
    if (opt.threads) unet::set_num_threads(opt.threads);
    seg = std::make_unique<unet::Segmenter>(opt.model, opt.device);
    std::optional<unet::Tiling> tiling = seg->meta().tiling;
    if (opt.no_tile) tiling.reset();
    if (opt.tile_scale) tiling = unet::Tiling{*opt.tile_scale, tiling ? tiling->overlap : 0.25};
    if (opt.overlap && !tiling)
      throw unet::Error("--overlap needs tiling: give --tile-scale S (the model's metadata has no tiling)");
    if (opt.overlap) tiling->overlap = *opt.overlap;
    seg->set_tiling(tiling);
    if (opt.save_input && tiling)
      throw unet::Error("--save-input writes the letterboxed input, which tiled inference does not use; add --no-tile");
  } catch (const std::exception& e) {
    std::cerr << "Error: " << one_line(e) << "\n";
    return 1;
  }
  const fs::path out(opt.out);
  const std::vector<std::string> stems = output_stems(opt.images);
  std::vector<std::string> lines;
  int failed = 0;
  for (size_t i = 0; i < opt.images.size(); ++i) {
    const std::string& file = opt.images[i];
    const std::string& stem = stems[i];
    std::string line;
    try {
      const cv::Mat image = unet::read_image(file);
      const unet::Result r = (*seg)(image, opt.min_area, opt.min_score);
      std::string mask_name, overlay_name;  // relative to DIR, as unet-predict's report names them
      if (!opt.out.empty()) {
        mask_name = "masks/" + stem + ".png";
        overlay_name = "overlays/" + stem + ".jpg";
        unet::write_file_atomic((out / mask_name).string(), unet::encode_palette_png(r.mask));
        const cv::Mat picture = unet::overlay(image, r.mask, r.regions);
        unet::write_file_atomic((out / overlay_name).string(), encode(".jpg", picture, {cv::IMWRITE_JPEG_QUALITY, 90}));
        if (opt.save_input) {
          unet::LetterboxTransform t;
          unet::write_file_atomic((out / "inputs" / (stem + ".png")).string(),
                                  encode(".png", unet::letterbox(image, seg->meta(), t)));
        }
      }
      line = unet::result_json(file, r, mask_name, overlay_name);
    } catch (const std::exception& e) {  // unet::Error, cv::Exception, c10::Error: report, go on
      ++failed;
      std::cerr << "Error: " << one_line(e) << "\n";
      line = unet::error_json(file, one_line(e));
    }
    std::cout << line << std::endl;
    lines.push_back(line);
  }
  if (!opt.out.empty()) {
    nlohmann::ordered_json images = nlohmann::ordered_json::array();
    for (const auto& l : lines) images.push_back(nlohmann::ordered_json::parse(l));
    const nlohmann::ordered_json doc = {
        {"model", opt.model}, {"backend", seg->backend()}, {"device", seg->device()}, {"images", images}};
    const std::string report = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    try {
      unet::write_file_atomic((out / "report.json").string(), std::vector<unsigned char>(report.begin(), report.end()));
    } catch (const std::exception& e) {
      std::cerr << "Error: " << one_line(e) << "\n";
      return 1;
    }
  }
  if (failed) {
    std::cerr << "Error: " << failed << " of " << opt.images.size() << " images failed (see their \"error\" lines)\n";
    return 1;
  }
  return 0;
}
