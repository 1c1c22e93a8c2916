#include "runner/secrets/secret_box.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace runner::secrets {
namespace {

constexpr unsigned char kVersion = 1;
constexpr std::size_t kNonceBytes = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
constexpr std::size_t kHeaderBytes = 1 + kKeyIdBytes + kNonceBytes;
static_assert(kKeyBytes == crypto_aead_xchacha20poly1305_ietf_KEYBYTES);

void EnsureSodium() {
  // sodium_init is thread-safe and idempotent; -1 means no usable RNG, which
  // no node can run without.
  static const int rc = sodium_init();
  if (rc < 0) throw std::runtime_error("libsodium could not be initialised (no RNG?)");
}

std::string Hex(const unsigned char* data, std::size_t n) {
  std::string out(n * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), data, n);
  out.resize(n * 2);
  return out;
}

Error KeyError(std::string message) { return MakeError("invalid_secret_key", std::move(message)); }

Error Unavailable(std::string message) {
  return MakeError("secrets_unavailable", std::move(message));
}

// Reads at most `limit` bytes; a key file is 65 bytes.
Result<std::string> ReadSmallFile(int fd, std::size_t limit) {
  std::string data(limit + 1, '\0');
  std::size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return KeyError(std::string("cannot read the key: ") + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  data.resize(got);
  return data;
}

}  // namespace

SecretKey::SecretKey(const std::array<unsigned char, kKeyBytes>& bytes) : key_(bytes) {
  EnsureSodium();
  crypto_generichash(id_.data(), id_.size(), key_.data(), key_.size(), nullptr, 0);
  id_hex_ = Hex(id_.data(), id_.size());
}

SecretKey::~SecretKey() { sodium_memzero(key_.data(), key_.size()); }

SecretKey SecretKey::FromBytes(const std::array<unsigned char, kKeyBytes>& bytes) {
  return SecretKey(bytes);
}

Result<SecretKey> SecretKey::Load(const std::filesystem::path& file) {
  const std::string where = " (--secret-key-file " + file.string() + ")";
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return KeyError("cannot open the secret key" + where + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return KeyError("the secret key" + where + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return KeyError("the secret key" + where + " is readable by group or others; run: chmod 600 " +
                    file.string());
  }
  auto text = ReadSmallFile(fd, 2 * kKeyBytes + 2);
  ::close(fd);
  if (!text) return text.error();
  std::string& hex = *text;
  while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r')) hex.pop_back();
  std::array<unsigned char, kKeyBytes> bytes{};
  std::size_t len = 0;
  const bool parsed = hex.size() == 2 * kKeyBytes &&
                      sodium_hex2bin(bytes.data(), bytes.size(), hex.data(), hex.size(), nullptr,
                                     &len, nullptr) == 0 &&
                      len == kKeyBytes;
  sodium_memzero(hex.data(), hex.size());
  if (!parsed) {
    return KeyError("the secret key" + where +
                    " must hold 64 hex digits (32 bytes); create one with: "
                    "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE; chmod 600 FILE");
  }
  SecretKey key(bytes);
  sodium_memzero(bytes.data(), bytes.size());
  return key;
}

Result<SecretKey> SecretKey::LoadOrCreate(const std::filesystem::path& file) {
  EnsureSodium();
  std::array<unsigned char, kKeyBytes> bytes{};
  randombytes_buf(bytes.data(), bytes.size());
  std::string hex = Hex(bytes.data(), bytes.size()) + "\n";
  sodium_memzero(bytes.data(), bytes.size());
  // O_EXCL: of two nodes creating the key at once, one wins and the other
  // loads the winner's key.
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0) {
    const ssize_t n = ::write(fd, hex.data(), hex.size());
    const bool ok = n == static_cast<ssize_t>(hex.size()) && ::fsync(fd) == 0;
    const int err = errno;
    ::close(fd);
    sodium_memzero(hex.data(), hex.size());
    if (!ok) {
      ::unlink(file.c_str());
      return KeyError("cannot write a new secret key to " + file.string() + ": " +
                      std::strerror(err));
    }
  } else if (errno != EEXIST) {
    sodium_memzero(hex.data(), hex.size());
    return KeyError("cannot create the secret key " + file.string() + ": " + std::strerror(errno));
  }
  return Load(file);
}

std::string Seal(const SecretKey& key, std::string_view plaintext, std::string_view associated) {
  std::string out(kHeaderBytes + plaintext.size() + crypto_aead_xchacha20poly1305_ietf_ABYTES,
                  '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  p[0] = kVersion;
  std::memcpy(p + 1, key.raw_id().data(), kKeyIdBytes);
  unsigned char* nonce = p + 1 + kKeyIdBytes;
  randombytes_buf(nonce, kNonceBytes);
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      p + kHeaderBytes, &clen, reinterpret_cast<const unsigned char*>(plaintext.data()),
      plaintext.size(), reinterpret_cast<const unsigned char*>(associated.data()),
      associated.size(), nullptr, nonce, key.bytes().data());
  out.resize(kHeaderBytes + clen);
  return out;
}

Result<std::string> Open(const SecretKey& key, std::string_view sealed,
                         std::string_view associated) {
  const auto* p = reinterpret_cast<const unsigned char*>(sealed.data());
  if (sealed.size() < kHeaderBytes + crypto_aead_xchacha20poly1305_ietf_ABYTES ||
      p[0] != kVersion) {
    return Unavailable("the task's secrets are in a format this runner does not know");
  }
  if (std::memcmp(p + 1, key.raw_id().data(), kKeyIdBytes) != 0) {
    return Unavailable("the task's secrets were sealed under secret key " +
                       Hex(p + 1, kKeyIdBytes) + ", but this node's key is " + key.id() +
                       "; every node sharing a database needs the same --secret-key-file");
  }
  std::string plain(sealed.size() - kHeaderBytes - crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
  unsigned long long mlen = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(
          reinterpret_cast<unsigned char*>(plain.data()), &mlen, nullptr, p + kHeaderBytes,
          sealed.size() - kHeaderBytes, reinterpret_cast<const unsigned char*>(associated.data()),
          associated.size(), p + 1 + kKeyIdBytes, key.bytes().data()) != 0) {
    return Unavailable(
        "the task's secrets do not open under this node's key: they were altered or belong to "
        "another task");
  }
  plain.resize(mlen);
  return plain;
}

std::string ToHex(std::string_view bytes) {
  std::string out(bytes.size() * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                 bytes.size());
  out.pop_back();  // the terminating NUL
  return out;
}

std::string FromHex(std::string_view hex) {
  std::string out(hex.size() / 2, '\0');
  size_t len = 0;
  if (sodium_hex2bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), hex.data(),
                     hex.size(), nullptr, &len, nullptr) != 0 ||
      len * 2 != hex.size()) {
    return {};
  }
  out.resize(len);
  return out;
}

}  // namespace runner::secrets
