// ModelMeta JSON: parsed with nlohmann::json (strict JSON, locale-independent numbers) and every
// field checked as unet_deploy/meta.py checks it (types, ranges, the same limits), one-line errors.
#include <cmath>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "unet_infer.h"

namespace unet {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "unet-deploy/1";
constexpr int kDivisor = 16, kMinSize = 2 * kDivisor, kMaxSize = 8192;
constexpr int kMaxClasses = 255, kMaxBaseChannels = 512;
constexpr double kMinTileScale = 1e-3, kMaxTileScale = 4.0;
constexpr double kNormLow = 1e-6, kNormHigh = 1e6;  // meta._NORM_RANGE

// A value cut to 60 characters for a one-line message (meta._short).
std::string shorten(const json& v) {
  std::string text = v.dump(-1, ' ', true, json::error_handler_t::replace);
  return text.size() <= 60 ? text : text.substr(0, 57) + "...";
}

[[noreturn]] void fail(const std::string& what) { throw Error(what); }

// meta._integer: ints and integral floats, no bool, no string, |n| <= 2^62.
long long integer(const json& v, const std::string& what) {
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (!std::isfinite(x) || std::floor(x) != x) fail(what + " " + shorten(v) + " is not an integer");
    if (std::fabs(x) > 4611686018427387904.0) fail(what + " is an integer far out of range");
    return static_cast<long long>(x);
  }
  if (v.is_number_unsigned()) {
    if (v.get<unsigned long long>() > (1ULL << 62)) fail(what + " is an integer far out of range");
    return static_cast<long long>(v.get<unsigned long long>());
  }
  if (v.is_number_integer()) {
    const long long n = v.get<long long>();
    if (n > (1LL << 62) || n < -(1LL << 62)) fail(what + " is an integer far out of range");
    return n;
  }
  fail(what + " " + shorten(v) + " is not an integer");
}

// meta._number: a finite number in [low, high].
double number(const json& v, const std::string& what, double low, double high) {
  if (!v.is_number()) fail(what + " " + shorten(v) + " is not a number");
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(what + " " + shorten(v) + " is not a finite number");
  if (x < low || x > high) {
    std::ostringstream o;
    o.imbue(std::locale::classic());
    o << what << " " << shorten(v) << " is outside [" << low << ", " << high << "]";
    fail(o.str());
  }
  return x;
}

const json& sequence(const json& v, const std::string& what) {
  if (!v.is_array()) fail(what + " " + shorten(v) + " is not a list");
  return v;
}

// meta._mapping: an object with only the keys in ``known``.
const json& mapping(const json& v, const std::string& what, const std::set<std::string>& known) {
  if (!v.is_object()) fail(what + " " + shorten(v) + " is not a JSON object");
  std::string unknown;
  for (auto it = v.begin(); it != v.end(); ++it)
    if (!known.count(it.key())) unknown += (unknown.empty() ? "" : ", ") + json(it.key()).dump();
  if (!unknown.empty()) fail(what + " has unknown keys [" + unknown + "]");
  return v;
}

std::string choice(const json& v, const std::string& what, const std::vector<std::string>& choices) {
  std::string all;
  for (const auto& c : choices) all += (all.empty() ? "" : ", ") + c;
  if (!v.is_string()) fail(what + " " + shorten(v) + " must be one of " + all);
  const std::string s = v.get<std::string>();
  for (const auto& c : choices)
    if (s == c) return s;
  fail(what + " " + shorten(v) + " must be one of " + all);
}

// str.isprintable() and str.strip() for the characters a class name may hold (UTF-8 above ASCII passes).
bool printable_unpadded(const std::string& s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return false;
  return s.front() != ' ' && s.back() != ' ';
}

std::vector<std::string> class_names(const json& v) {
  const json& names = sequence(v, "classes");
  if (names.empty() || names.size() > kMaxClasses)
    fail("classes: " + std::to_string(names.size()) + " names, need 1 to 255 (class ids are uint8, 255 is the ignore value)");
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string what = "classes[" + std::to_string(i) + "] " + shorten(names[i]);
    if (!names[i].is_string()) fail(what + " is not a string");
    const std::string name = names[i].get<std::string>();
    if (!printable_unpadded(name)) fail(what + " must be non-empty, printable, without newlines or edge spaces");
    if (!seen.insert(name).second) fail(what + " appears twice; class names must be distinct");
    out.push_back(name);
  }
  return out;
}

void input_size(const json& v, int& h, int& w) {
  long long hh, ww;
  if (v.is_array()) {
    if (v.size() != 2) fail("input size " + shorten(v) + " is not two integers (height width)");
    hh = integer(v[0], "input size"), ww = integer(v[1], "input size");
  } else {
    hh = ww = integer(v, "input size");
  }
  const std::string shown = std::to_string(hh) + "x" + std::to_string(ww);
  if (hh < kMinSize || ww < kMinSize || hh % kDivisor || ww % kDivisor)
    fail("input size " + shown + " is not a multiple of 16 (at least 32)");
  if (hh > kMaxSize || ww > kMaxSize) fail("input size " + shown + " exceeds 8192 per side");
  h = static_cast<int>(hh), w = static_cast<int>(ww);
}

std::vector<double> constants(const json& v, const std::string& what, double low, int channels) {
  std::vector<double> out;
  const json& values = sequence(v, what);
  for (size_t i = 0; i < values.size(); ++i)
    out.push_back(number(values[i], what + "[" + std::to_string(i) + "]", low, kNormHigh));
  if (static_cast<int>(out.size()) != channels)
    fail(what + " has " + std::to_string(out.size()) + " values, the model has " + std::to_string(channels) +
         " input channels");
  return out;
}

std::optional<Tiling> tiling_field(const json& v) {
  if (v.is_null()) return std::nullopt;
  const json& d = mapping(v, "tiling", {"scale", "overlap"});
  const json scale = d.contains("scale") ? d["scale"] : json(nullptr);
  const json overlap = d.contains("overlap") ? d["overlap"] : json(0.25);
  return check_tiling(number(scale, "tiling.scale (1.0 = native pixels)", kMinTileScale, kMaxTileScale),
                      number(overlap, "tiling.overlap", 0.0, 1.0));
}

ModelMeta parse_fields(const json& root) {
  static const std::set<std::string> known = {"classes", "input_size", "letterbox", "color", "mean", "std",
                                              "scale", "head", "arch", "tiling", "extra", "format"};
  if (!root.is_object()) fail("metadata is not a JSON object");
  std::string unknown;
  for (auto it = root.begin(); it != root.end(); ++it)
    if (!known.count(it.key())) unknown += (unknown.empty() ? "" : ", ") + json(it.key()).dump();
  if (!unknown.empty()) fail("unknown metadata keys [" + unknown + "]; upgrade unet_infer");
  if (!root.contains("classes")) fail("metadata has no 'classes'");
  const json format = root.value("format", json(kFormat));
  if (format != json(kFormat))
    fail("metadata format " + shorten(format) + " is not supported (this is " + kFormat +
         "); upgrade unet_infer or re-export the model");
  ModelMeta m;
  m.classes = class_names(root["classes"]);
  if (root.contains("input_size")) input_size(root["input_size"], m.input_h, m.input_w);
  if (root.contains("letterbox")) {
    const json& box = mapping(root["letterbox"], "letterbox", {"pad", "fill"});
    if (box.contains("fill")) m.fill = number(box["fill"], "letterbox.fill", 0.0, 255.0);
    if (box.contains("pad")) m.pad = choice(box["pad"], "letterbox.pad", {"top-left", "center", "rect"});
  }
  if (root.contains("color")) m.color = choice(root["color"], "color", {"RGB", "BGR", "GRAY"});
  if (root.contains("head")) m.head = choice(root["head"], "head", {"softmax", "sigmoid"});
  if (m.head == "sigmoid" && m.classes.size() != 2)
    fail("head sigmoid needs exactly 2 classes, not " + std::to_string(m.classes.size()) + "; use softmax");
  if (root.contains("arch")) {
    const json& arch = mapping(root["arch"], "arch", {"base_channels", "upsample", "in_channels"});
    if (arch.contains("base_channels")) {
      const long long base = integer(arch["base_channels"], "arch.base_channels");
      if (base < 1 || base > kMaxBaseChannels)
        fail("arch.base_channels " + std::to_string(base) + " is outside [1, 512]");
      m.base_channels = static_cast<int>(base);
    }
    if (arch.contains("in_channels")) {
      const long long ch = integer(arch["in_channels"], "arch.in_channels");
      if (ch != 1 && ch != 3) fail("arch.in_channels " + std::to_string(ch) + " must be 1 (GRAY) or 3 (RGB/BGR)");
      m.in_channels = static_cast<int>(ch);
    }
    if (arch.contains("upsample")) m.upsample = choice(arch["upsample"], "arch.upsample", {"transpose", "bilinear"});
  }
  if ((m.color == "GRAY") != (m.in_channels == 1))
    fail("color " + m.color + " does not fit arch.in_channels=" + std::to_string(m.in_channels));
  // The defaults are three values, as in Python: a GRAY model must state its mean and std.
  m.mean = constants(root.value("mean", json::array({0.0, 0.0, 0.0})), "mean", -kNormHigh, m.in_channels);
  m.stddev = constants(root.value("std", json::array({1.0, 1.0, 1.0})), "std", kNormLow, m.in_channels);
  if (root.contains("scale")) m.scale = number(root["scale"], "scale", kNormLow, kNormHigh);
  if (root.contains("tiling")) m.tiling = tiling_field(root["tiling"]);
  if (root.contains("extra")) {
    const json& extra = root["extra"];
    if (!extra.is_object()) fail("extra " + shorten(extra) + " is not a JSON object");
    if (extra.contains("dynamic") && extra["dynamic"] == json(false)) m.dynamic = false;
  }
  return m;
}

}  // namespace

Tiling check_tiling(double scale, double overlap) {
  if (!std::isfinite(scale) || scale < kMinTileScale || scale > kMaxTileScale) {
    std::ostringstream o;
    o.imbue(std::locale::classic());
    o << "tiling scale " << scale << " is outside [0.001, 4] (1.0 = native pixels)";
    throw Error(o.str());
  }
  if (!std::isfinite(overlap) || overlap < 0.0 || overlap >= 1.0) {
    std::ostringstream o;
    o.imbue(std::locale::classic());
    o << "tiling overlap " << overlap << " must be in [0, 1) (a fraction of a tile)";
    throw Error(o.str());
  }
  return Tiling{scale, overlap};
}

ModelMeta ModelMeta::from_json(const std::string& text, const std::string& source) {
  json root;
  try {
    root = json::parse(text);  // strict JSON: no NaN, inf, hex floats or comments; numbers in the "C" rules
  } catch (const json::exception& e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    throw Error(source + ": metadata is not valid JSON (" + (why.size() > 120 ? why.substr(0, 117) + "..." : why) +
                "); re-export the model with unet-export");
  }
  try {
    return parse_fields(root);
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
}

}  // namespace unet
