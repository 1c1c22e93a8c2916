#pragma once

// Task secrets at rest: sealed with XChaCha20-Poly1305 (libsodium's IETF AEAD)
// under a node key read from `--secret-key-file`. The task id is the
// associated data, so a sealed blob copied onto another task's row does not
// open. Every sealed blob names the key that sealed it (an 8-byte BLAKE2b
// fingerprint), so a node holding another key says which key it would need
// instead of "decryption failed".
//
// Sealed layout (stored as bytea): version (1 byte, 1) | key id (8) |
// nonce (24) | ciphertext + tag (16).
//
// Thread-safety: SecretKey is immutable after Load; Seal and Open may be
// called from any thread at once.

#include <array>
#include <filesystem>
#include <string>
#include <string_view>

#include "base/result.h"

namespace runner::secrets {

inline constexpr std::size_t kKeyBytes = 32;
inline constexpr std::size_t kKeyIdBytes = 8;

class SecretKey {
 public:
  // Reads the key file: 64 hex digits (32 bytes), optional trailing newline.
  // The file must not be readable by group or others. Errors say how to fix.
  static Result<SecretKey> Load(const std::filesystem::path& file);
  // Load, or when `file` does not exist create it (mode 0600, exclusive
  // create, so two nodes starting at once on one data dir agree on one key).
  static Result<SecretKey> LoadOrCreate(const std::filesystem::path& file);
  // A key from raw bytes (tests).
  static SecretKey FromBytes(const std::array<unsigned char, kKeyBytes>& bytes);

  SecretKey(const SecretKey&) = default;
  SecretKey& operator=(const SecretKey&) = default;
  ~SecretKey();

  // 16 hex digits naming the key; safe to log and to store.
  const std::string& id() const { return id_hex_; }
  const std::array<unsigned char, kKeyBytes>& bytes() const { return key_; }
  const std::array<unsigned char, kKeyIdBytes>& raw_id() const { return id_; }

 private:
  explicit SecretKey(const std::array<unsigned char, kKeyBytes>& bytes);
  std::array<unsigned char, kKeyBytes> key_{};
  std::array<unsigned char, kKeyIdBytes> id_{};
  std::string id_hex_;
};

// Seals `plaintext` (any bytes) for the row `associated` (the task id).
std::string Seal(const SecretKey& key, std::string_view plaintext, std::string_view associated);

// Opens a blob made by Seal. Errors (code `secrets_unavailable`): a blob of
// another key (the message names both key ids and how to fix it), a blob that
// was altered or belongs to another row, a blob of an unknown version.
Result<std::string> Open(const SecretKey& key, std::string_view sealed,
                         std::string_view associated);

// A sealed blob as the text the database stores it in (lower-case hex), and
// back. FromHex of text that is not hex gives an empty blob, which Open
// refuses like any damaged blob.
std::string ToHex(std::string_view bytes);
std::string FromHex(std::string_view hex);

}  // namespace runner::secrets
