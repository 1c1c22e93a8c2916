#pragma once

// Error values for expected failures (daemon down, database unreachable, bad
// request, container exit). Exceptions are reserved for bugs and bad
// configuration. `Error::code` is one of the snake_case codes of
// base/error_codes.h (`not_found`, `validation_failed`, `image_not_found`, ...),
// so the API layer maps it to HTTP without guessing; `message` says what
// happened and how to fix it.
//
// Thread-safety: value types, no shared state.

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace runner {

struct Error {
  std::string code;
  std::string message;
};

inline Error MakeError(std::string code, std::string message) {
  return Error{std::move(code), std::move(message)};
}

// "code: message", for logs.
inline std::string ErrorText(const Error& e) { return e.code + ": " + e.message; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error)
      : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const {
    assert(!ok_);
    return error_;
  }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

}  // namespace runner
