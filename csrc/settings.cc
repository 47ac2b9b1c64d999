// The LSTM_JAX_NATIVE_* settings table and its checks (see settings.h).
#include "settings.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace lstm_jax {
namespace {

// A choice setting lists its values (null-terminated); an integer setting has
// none and accepts decimal digits only, from `min` to `max`.
struct Setting {
  const char* name;
  const char* const* choices;
  int64_t min, max;
};

constexpr const char* kIsas[] = {"avx512", "avx2", "portable", nullptr};
constexpr const char* kBf16Isas[] = {"amx", "avx512bf16", nullptr};
constexpr const char* kOnOff[] = {"0", "1", nullptr};
constexpr int64_t kMaxMacs = int64_t(1) << 62;

// Read once per process: ISA, BF16, HUGEPAGES, POISON_REUSED. Read per call: the rest.
constexpr Setting kSettings[] = {
    {"LSTM_JAX_NATIVE_ISA", kIsas, 0, 0},             // the instruction set, if supported
    {"LSTM_JAX_NATIVE_BF16", kBf16Isas, 0, 0},        // the bfloat16 kernels, if supported
    {"LSTM_JAX_NATIVE_HUGEPAGES", kOnOff, 0, 0},      // 0: no madvise(MADV_HUGEPAGE)
    {"LSTM_JAX_NATIVE_POISON_REUSED", kOnOff, 0, 0},  // 1 (tests): NaN in a reused scratch's packed part
    {"LSTM_JAX_NATIVE_SPLIT_MACS", nullptr, 0, kMaxMacs},  // one thread below this
    {"LSTM_JAX_NATIVE_UNITS_MACS", nullptr, 0, kMaxMacs},  // inference splits units from this
    {"LSTM_JAX_NATIVE_THREADS", nullptr, 1, 4096},    // at most this many threads
    {"LSTM_JAX_NATIVE_MIN_ROWS", nullptr, 1, 1 << 30},  // rows per thread to split rows
};
constexpr int kCount = int(sizeof(kSettings) / sizeof(kSettings[0]));

const Setting* Find(const char* name) {
  for (const Setting& s : kSettings) {
    if (std::strcmp(s.name, name) == 0) return &s;
  }
  return nullptr;
}

// Decimal digits only (no sign, space or suffix), within [min, max]; else false.
bool ParseInteger(const char* text, const Setting& s, int64_t* value) {
  const size_t n = std::strlen(text);
  if (n == 0 || n > 18) return false;  // 18 digits cannot overflow int64_t
  int64_t v = 0;
  for (size_t i = 0; i < n; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    v = v * 10 + (text[i] - '0');
  }
  if (v < s.min || v > s.max) return false;
  *value = v;
  return true;
}

bool IsChoice(const char* text, const Setting& s) {
  for (const char* const* c = s.choices; *c != nullptr; ++c) {
    if (std::strcmp(*c, text) == 0) return true;
  }
  return false;
}

// "'a', 'b', 'c'" or "an integer from MIN to MAX".
std::string Accepted(const Setting& s) {
  if (s.choices == nullptr) {
    return "an integer from " + std::to_string(s.min) + " to " + std::to_string(s.max);
  }
  std::string out = "one of ";
  for (const char* const* c = s.choices; *c != nullptr; ++c) {
    out += (c == s.choices ? "'" : ", '") + std::string(*c) + "'";
  }
  return out;
}

// Why `s`'s value in the environment is invalid, or "" (valid or unset).
std::string Check(const Setting& s) {
  const char* text = std::getenv(s.name);
  if (text == nullptr) return "";
  int64_t value;
  const bool ok = s.choices != nullptr ? IsChoice(text, s) : ParseInteger(text, s, &value);
  if (ok) return "";
  return std::string(s.name) + "='" + text + "' is not " + Accepted(s);
}

}  // namespace

std::string SettingsError() {
  for (const Setting& s : kSettings) {
    std::string error = Check(s);
    if (!error.empty()) return error;
  }
  return "";
}

std::string ChoiceSetting(const char* name) {
  const Setting* s = Find(name);
  const char* text = std::getenv(name);
  if (s == nullptr || s->choices == nullptr || text == nullptr || !IsChoice(text, *s)) return "";
  return text;
}

int64_t IntegerSetting(const char* name, int64_t fallback) {
  const Setting* s = Find(name);
  const char* text = std::getenv(name);
  int64_t value;
  if (s == nullptr || s->choices != nullptr || text == nullptr || !ParseInteger(text, *s, &value)) {
    return fallback;
  }
  return value;
}

}  // namespace lstm_jax


// For Python's check when it loads the extension (lstm_jax/kernels/native.py):
// SettingsError() (valid until this thread's next call), and the settings'
// names, i = 0, 1, ... until null, to spot a mistyped variable name.
LSTM_JAX_EXPORT const char* LstmJaxNativeSettingsError();
LSTM_JAX_EXPORT const char* LstmJaxNativeSettingName(int i);

const char* LstmJaxNativeSettingsError() {
  thread_local std::string error;
  error = lstm_jax::SettingsError();
  return error.c_str();
}

const char* LstmJaxNativeSettingName(int i) {
  return i >= 0 && i < lstm_jax::kCount ? lstm_jax::kSettings[i].name : nullptr;
}
