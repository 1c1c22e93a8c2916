#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "runner/secrets/output_masker.h"
#include "runner/secrets/secret_box.h"

namespace fs = std::filesystem;
using runner::secrets::Open;
using runner::secrets::OutputMasker;
using runner::secrets::Seal;
using runner::secrets::SecretKey;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "secrets-test.XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

SecretKey KeyOf(unsigned char fill) {
  std::array<unsigned char, runner::secrets::kKeyBytes> bytes{};
  bytes.fill(fill);
  return SecretKey::FromBytes(bytes);
}

// Feeds `text` in chunks of `size` bytes and returns everything released.
std::string MaskInChunks(OutputMasker& m, const std::string& text, std::size_t size) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); i += size) out += m.Feed(text.substr(i, size));
  out += m.Flush();
  return out;
}

}  // namespace

TEST_CASE("a sealed secret opens only under its key and for its task", "[secrets]") {
  const auto key = KeyOf(1);
  const std::string sealed = Seal(key, R"({"TOKEN":"hunter22"})", "task-1");
  CHECK(sealed.find("hunter22") == std::string::npos);

  auto opened = Open(key, sealed, "task-1");
  REQUIRE(opened.ok());
  CHECK(*opened == R"({"TOKEN":"hunter22"})");

  SECTION("another task's row does not open it") {
    auto moved = Open(key, sealed, "task-2");
    REQUIRE_FALSE(moved.ok());
    CHECK(moved.error().code == "secrets_unavailable");
  }
  SECTION("another key names both keys and the fix") {
    const auto other = KeyOf(2);
    auto wrong = Open(other, sealed, "task-1");
    REQUIRE_FALSE(wrong.ok());
    CHECK(wrong.error().code == "secrets_unavailable");
    CHECK_THAT(wrong.error().message, Catch::Contains(key.id()));
    CHECK_THAT(wrong.error().message, Catch::Contains(other.id()));
    CHECK_THAT(wrong.error().message, Catch::Contains("--secret-key-file"));
  }
  SECTION("a flipped byte is refused") {
    std::string bad = sealed;
    bad.back() = static_cast<char>(bad.back() ^ 1);
    CHECK_FALSE(Open(key, bad, "task-1").ok());
  }
  SECTION("two seals of one value differ (fresh nonce)") {
    CHECK(Seal(key, "same", "t") != Seal(key, "same", "t"));
  }
}

TEST_CASE("a sealed blob survives its text form, and damaged text does not open", "[secrets]") {
  std::string bytes("\x00\x01\x7f\x80\xfe\xff", 6);
  CHECK(runner::secrets::ToHex(bytes) == "00017f80feff");
  CHECK(runner::secrets::FromHex("00017f80feff") == bytes);
  CHECK(runner::secrets::FromHex("00017F80FEFF") == bytes);
  CHECK(runner::secrets::FromHex("0001zz").empty());
  CHECK(runner::secrets::FromHex("000").empty());

  const auto key = KeyOf(7);
  std::string text = runner::secrets::ToHex(Seal(key, "v=1", "task-1"));
  auto opened = Open(key, runner::secrets::FromHex(text), "task-1");
  REQUIRE(opened.ok());
  CHECK(*opened == "v=1");
  text[text.size() / 2] = 'x';
  CHECK_FALSE(Open(key, runner::secrets::FromHex(text), "task-1").ok());
}

TEST_CASE("the key file is created 0600 once and then loaded", "[secrets]") {
  TempDir dir;
  const fs::path file = dir.path / "secret.key";
  auto first = SecretKey::LoadOrCreate(file);
  REQUIRE(first.ok());
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto again = SecretKey::LoadOrCreate(file);
  REQUIRE(again.ok());
  CHECK(again->id() == first->id());

  SECTION("a key readable by others is refused with the chmod that fixes it") {
    ::chmod(file.c_str(), 0644);
    auto loose = SecretKey::Load(file);
    REQUIRE_FALSE(loose.ok());
    CHECK_THAT(loose.error().message, Catch::Contains("chmod 600"));
  }
  SECTION("a file that is not 64 hex digits is refused") {
    std::ofstream(file, std::ios::trunc) << "not-a-key\n";
    auto bad = SecretKey::Load(file);
    REQUIRE_FALSE(bad.ok());
    CHECK_THAT(bad.error().message, Catch::Contains("64 hex digits"));
  }
  SECTION("a missing file is an error for Load") {
    CHECK_FALSE(SecretKey::Load(dir.path / "absent.key").ok());
  }
}

TEST_CASE("every occurrence of a secret value is masked", "[secrets][mask]") {
  OutputMasker m({"hunter22", "s3cr"});
  CHECK(m.Feed("pw=hunter22 and s3cr, again hunter22\n") == "pw=*** and ***, again ***\n");
  CHECK(m.Flush().empty());
}

TEST_CASE("a value split across chunks is masked", "[secrets][mask]") {
  OutputMasker m({"hunter22"});
  CHECK(m.Feed("token: hun") == "token: ");
  CHECK(m.held() == 3);
  CHECK(m.Feed("ter22 done") == "*** done");
  CHECK(m.held() == 0);
}

TEST_CASE("masking holds no more than could still become a secret", "[secrets][mask]") {
  OutputMasker m({"hunter22"});
  CHECK(m.Feed("hunt") == "");
  CHECK(m.Feed("ing season") == "hunting season");
  CHECK(m.Feed("ends with hu") == "ends with ");
  CHECK(m.Flush() == "hu");
}

TEST_CASE("short values are not masked", "[secrets][mask]") {
  OutputMasker m({"abc", "1"});
  CHECK(m.empty());
  CHECK(m.Feed("abc 1") == "abc 1");
}

TEST_CASE("a value of exactly 4 bytes is masked, one of 3 is not", "[secrets][mask]") {
  OutputMasker m({"abc", "wxyz"});
  CHECK_FALSE(m.empty());
  std::string out = m.Feed("abc wxyz abcwxyz wxy");
  out += m.Flush();
  CHECK(out == "abc *** abc*** wxy");
}

TEST_CASE("each line of a multi-line value is masked too", "[secrets][mask]") {
  const std::string key =
      "-----BEGIN KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQyNTUxOQAAACDx\n-----END KEY-----\n";
  OutputMasker m({key});
  // Whole, one line alone, and the key with CRLF line ends (as a tool may
  // print it): no line of it in the clear.
  std::string crlf = key;
  for (std::size_t at = crlf.find('\n'); at != std::string::npos; at = crlf.find('\n', at + 2)) {
    crlf.insert(at, "\r");
  }
  std::string out = m.Feed("whole:" + key + "line:QyNTUxOQAAACDx\n" + "crlf:" + crlf);
  out += m.Flush();
  CHECK(out.find("b3BlbnNzaC1rZXktdjEAAAAA") == std::string::npos);
  CHECK(out.find("QyNTUxOQAAACDx") == std::string::npos);
  CHECK(out.find("line:***\n") != std::string::npos);
  CHECK(out.rfind("whole:***", 0) == 0);
}

TEST_CASE("a value that is a prefix of another masks both, longest first", "[secrets][mask]") {
  OutputMasker m({"abcd", "abcdefgh"});
  // The whole longer value, the shorter alone, and the shorter followed by
  // a part of the longer that never completes (only the shorter is a value).
  const std::string text = "abcdefgh abcdX abcdefg";
  std::string out = m.Feed(text);
  out += m.Flush();
  CHECK(out == "*** ***X ***efg");
  for (std::size_t size : {1u, 2u, 3u, 4u, 5u}) {
    OutputMasker chunked({"abcd", "abcdefgh"});
    CHECK(MaskInChunks(chunked, text, size) == out);
  }
}

TEST_CASE("a value repeated across every chunk boundary is masked and holds a bounded tail",
          "[secrets][mask]") {
  // `yes`-style output of a value with no gap keeps one masked region open to
  // the end of every chunk; the masker once held that whole region (all of
  // the task's output, rescanned per chunk) until the stream ended.
  OutputMasker m({"abab"});
  std::string out;
  std::size_t most_held = 0;
  for (int i = 0; i < 20000; ++i) {
    out += m.Feed(i % 2 == 0 ? "aba" : "bab");  // "abab..." in 3-byte chunks
    most_held = std::max(most_held, m.held());
  }
  out += m.Flush();
  CHECK(most_held < 4);
  CHECK(out == "***");

  // A value that overlaps itself ("aaaa" in a run of a's), split at every byte.
  OutputMasker run({"aaaa"});
  std::string masked;
  for (int i = 0; i < 5000; ++i) {
    masked += run.Feed("a");
    CHECK(run.held() < 4);
  }
  masked += run.Flush();
  CHECK(masked == "***");
}

TEST_CASE("overlapping values leave no part of either in the clear", "[secrets][mask]") {
  OutputMasker m({"abcd", "cdef"});
  std::string out = m.Feed("xabcdefx");
  out += m.Flush();
  CHECK(out == "x***x");
}

TEST_CASE("masking is the same for every chunking of the output", "[secrets][mask]") {
  const std::vector<std::string> values = {"p4ssw0rd", "p4ss", "token-XYZ", "zzzz"};
  std::string text;
  std::mt19937 rng(7);
  const std::string pieces[] = {"p4ssw0rd", "p4ss", "p4s", "token-XYZ",  "token-", "zzz",
                                "zzzzz",    " ",    "\n",  "plain text", "x"};
  for (int i = 0; i < 400; ++i) text += pieces[rng() % std::size(pieces)];
  OutputMasker whole(values);
  std::string expected = whole.Feed(text);
  expected += whole.Flush();
  CHECK(expected.find("p4ss") == std::string::npos);
  CHECK(expected.find("token-XYZ") == std::string::npos);
  for (std::size_t size : {1u, 2u, 3u, 5u, 7u, 64u}) {
    OutputMasker chunked(values);
    CHECK(MaskInChunks(chunked, text, size) == expected);
  }
}
