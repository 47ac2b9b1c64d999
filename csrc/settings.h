// The native kernels' settings: the LSTM_JAX_NATIVE_* environment variables,
// for tests of every code path and for measurements. One table (settings.cc)
// names each variable and its accepted values; it is the only place they are
// listed. A value outside them is an error wherever it is read: Python raises
// ValueError when it loads the extension (LstmJaxNativeSettingsError), and
// every custom call returns INVALID_ARGUMENT, so a mistyped value never
// quietly becomes 0, the default, or another kernel.
#ifndef LSTM_JAX_SETTINGS_H_
#define LSTM_JAX_SETTINGS_H_

#include <cstdint>
#include <string>

// A C symbol Python loads by name (ctypes or an FFI handler); the build hides every other one.
#define LSTM_JAX_EXPORT extern "C" __attribute__((visibility("default")))

namespace lstm_jax {

// The message for the first invalid setting in the environment, naming the
// variable, its value and the accepted values; "" when all are valid or unset.
std::string SettingsError();

// A choice setting's value (e.g. LSTM_JAX_NATIVE_ISA): "" when unset or invalid.
std::string ChoiceSetting(const char* name);

// An integer setting's value: `fallback` when unset or invalid.
int64_t IntegerSetting(const char* name, int64_t fallback);

}  // namespace lstm_jax

#endif  // LSTM_JAX_SETTINGS_H_
