#include "runner/schedule/time_zone.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <iterator>
#include <set>

namespace runner::schedule {
namespace {

namespace chr = std::chrono;

constexpr std::int64_t kDay = 86400;
constexpr std::size_t kMaxZoneFile = 1 << 20;

Error Invalid(std::string message) { return MakeError("validation_failed", std::move(message)); }

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name.front() == '/') return false;
  if (name.find("..") != std::string::npos) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '_' || c == '-' ||
           c == '+';
  });
}

class Reader {
 public:
  explicit Reader(const std::string& data) : d_(data) {}
  bool Has(std::size_t n) const { return pos_ + n <= d_.size(); }
  std::int64_t Int(std::size_t width) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width; ++i) v = (v << 8) | static_cast<unsigned char>(d_[pos_ + i]);
    pos_ += width;
    if (width == 4) return static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
    return static_cast<std::int64_t>(v);
  }
  unsigned char Byte() { return static_cast<unsigned char>(d_[pos_++]); }
  void Skip(std::size_t n) { pos_ += n; }
  std::size_t pos() const { return pos_; }

 private:
  const std::string& d_;
  std::size_t pos_ = 0;
};

struct Counts {
  std::int64_t isut, isstd, leap, time, type, chars;
};

bool ReadHeader(Reader& r, char& version, Counts& c) {
  if (!r.Has(44)) return false;
  const std::size_t start = r.pos();
  (void)start;
  if (r.Byte() != 'T' || r.Byte() != 'Z' || r.Byte() != 'i' || r.Byte() != 'f') return false;
  version = static_cast<char>(r.Byte());
  r.Skip(15);
  c = {r.Int(4), r.Int(4), r.Int(4), r.Int(4), r.Int(4), r.Int(4)};
  return c.isut >= 0 && c.isstd >= 0 && c.leap >= 0 && c.time >= 0 && c.type > 0 && c.chars >= 0 &&
         c.type < 256;
}

std::size_t BlockSize(const Counts& c, std::size_t time_width) {
  return static_cast<std::size_t>(c.time) * (time_width + 1) +
         static_cast<std::size_t>(c.type) * 6 + static_cast<std::size_t>(c.chars) +
         static_cast<std::size_t>(c.leap) * (time_width + 4) + static_cast<std::size_t>(c.isstd) +
         static_cast<std::size_t>(c.isut);
}

chr::sys_days DaysOf(int y, unsigned m, unsigned d) {
  return chr::sys_days{chr::year{y} / chr::month{m} / chr::day{d}};
}

// Days since the epoch of a rule's date in year `y`.
std::int64_t RuleDay(const TimeZone::Rule::When& w, int y) {
  const bool leap = chr::year{y}.is_leap();
  const auto jan1 = DaysOf(y, 1, 1).time_since_epoch().count();
  if (w.kind == 'J') return jan1 + (w.a - 1) + ((leap && w.a >= 60) ? 1 : 0);
  if (w.kind == 'D') return jan1 + w.a;
  const auto first = DaysOf(y, static_cast<unsigned>(w.a), 1);
  const int first_wd = static_cast<int>(chr::weekday{first}.c_encoding());
  int day = 1 + (w.c - first_wd + 7) % 7 + (w.b - 1) * 7;
  const auto last = static_cast<int>(static_cast<unsigned>(
      (chr::year{y} / chr::month{static_cast<unsigned>(w.a)} / chr::last).day()));
  while (day > last) day -= 7;
  return first.time_since_epoch().count() + day - 1;
}

int YearOf(UnixSeconds t) {
  const auto days = chr::floor<chr::days>(chr::sys_seconds{chr::seconds{t}});
  return static_cast<int>(chr::year_month_day{days}.year());
}

// POSIX TZ parsing: name, offset ([+-]hh[:mm[:ss]], positive west), rules.
class RuleParser {
 public:
  explicit RuleParser(const std::string& s) : s_(s) {}
  bool End() const { return i_ >= s_.size(); }
  bool Name() {
    if (i_ < s_.size() && s_[i_] == '<') {
      const auto close = s_.find('>', i_);
      if (close == std::string::npos) return false;
      i_ = close + 1;
      return true;
    }
    const std::size_t start = i_;
    while (i_ < s_.size() && std::isalpha(static_cast<unsigned char>(s_[i_]))) ++i_;
    return i_ - start >= 3;
  }
  bool NextIsOffset() const {
    return i_ < s_.size() &&
           (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '+' || s_[i_] == '-');
  }
  // hh[:mm[:ss]] with an optional sign; seconds.
  bool Time(std::int32_t& out) {
    int sign = 1;
    if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) sign = s_[i_++] == '-' ? -1 : 1;
    std::int32_t parts[3] = {0, 0, 0};
    for (int p = 0; p < 3; ++p) {
      if (p > 0) {
        if (i_ >= s_.size() || s_[i_] != ':') break;
        ++i_;
      }
      if (!Number(parts[p], 0, p == 0 ? 167 : 59)) return false;
    }
    out = sign * (parts[0] * 3600 + parts[1] * 60 + parts[2]);
    return true;
  }
  bool When(TimeZone::Rule::When& w) {
    if (i_ >= s_.size() || s_[i_] != ',') return false;
    ++i_;
    if (i_ < s_.size() && s_[i_] == 'J') {
      ++i_;
      w.kind = 'J';
      if (!Number(w.a, 1, 365)) return false;
    } else if (i_ < s_.size() && s_[i_] == 'M') {
      ++i_;
      w.kind = 'M';
      if (!Number(w.a, 1, 12) || !Char('.') || !Number(w.b, 1, 5) || !Char('.') ||
          !Number(w.c, 0, 6)) {
        return false;
      }
    } else {
      w.kind = 'D';
      if (!Number(w.a, 0, 365)) return false;
    }
    w.time = 7200;
    if (i_ < s_.size() && s_[i_] == '/') {
      ++i_;
      return Time(w.time);
    }
    return true;
  }

 private:
  bool Char(char c) {
    if (i_ >= s_.size() || s_[i_] != c) return false;
    ++i_;
    return true;
  }
  template <class Int>
  bool Number(Int& out, int lo, int hi) {
    const std::size_t start = i_;
    long v = 0;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_])) && i_ - start < 4) {
      v = v * 10 + (s_[i_++] - '0');
    }
    if (i_ == start || v < lo || v > hi) return false;
    out = static_cast<Int>(v);
    return true;
  }
  const std::string& s_;
  std::size_t i_ = 0;
};

}  // namespace

std::int32_t TimeZone::Rule::OffsetAt(UnixSeconds t) const {
  if (!has_dst) return std_offset;
  const int y = YearOf(t + std_offset);
  const UnixSeconds start_utc = RuleDay(start, y) * kDay + start.time - std_offset;
  const UnixSeconds end_utc = RuleDay(end, y) * kDay + end.time - dst_offset;
  const bool dst =
      start_utc < end_utc ? (t >= start_utc && t < end_utc) : !(t >= end_utc && t < start_utc);
  return dst ? dst_offset : std_offset;
}

Result<TimeZone::Rule> TimeZone::ParseRule(const std::string& tz) {
  Rule rule;
  RuleParser p(tz);
  std::int32_t off = 0;
  if (!p.Name() || !p.Time(off)) return Invalid("bad POSIX TZ rule: " + tz);
  rule.std_offset = -off;
  if (p.End()) return rule;
  if (!p.Name()) return Invalid("bad POSIX TZ rule: " + tz);
  rule.has_dst = true;
  rule.dst_offset = rule.std_offset + 3600;
  if (p.NextIsOffset()) {
    if (!p.Time(off)) return Invalid("bad POSIX TZ rule: " + tz);
    rule.dst_offset = -off;
  }
  if (!p.When(rule.start) || !p.When(rule.end) || !p.End()) {
    return Invalid("bad POSIX TZ rule (only rules with explicit dates are supported): " + tz);
  }
  return rule;
}

TimeZone TimeZone::Utc() {
  TimeZone tz;
  tz.name_ = "UTC";
  return tz;
}

Result<TimeZone> TimeZone::Load(const std::string& name, const std::filesystem::path& zoneinfo) {
  if (name == "UTC" || name == "Etc/UTC") {
    TimeZone tz = Utc();
    tz.name_ = name;
    return tz;
  }
  if (!ValidName(name)) return Invalid("timezone: '" + name + "' is not an IANA time zone name");
  std::ifstream in(zoneinfo / name, std::ios::binary);
  std::string data;
  if (in) {
    data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const auto unknown = [&] {
    return Invalid("timezone: unknown time zone '" + name +
                   "' (an IANA name such as Europe/Berlin or America/New_York; the list is in " +
                   zoneinfo.string() + ", Debian's tzdata package)");
  };
  if (data.empty() || data.size() > kMaxZoneFile) return unknown();

  Reader r(data);
  char version = 0;
  Counts c{};
  if (!ReadHeader(r, version, c) || !r.Has(BlockSize(c, 4))) return unknown();
  std::size_t width = 4;
  if (version >= '2') {
    r.Skip(BlockSize(c, 4));
    if (!ReadHeader(r, version, c) || !r.Has(BlockSize(c, 8))) return unknown();
    width = 8;
  }
  TimeZone tz;
  tz.name_ = name;
  std::vector<UnixSeconds> times(static_cast<std::size_t>(c.time));
  for (auto& t : times) t = r.Int(width);
  std::vector<unsigned char> idx(static_cast<std::size_t>(c.time));
  for (auto& i : idx) i = r.Byte();
  std::vector<std::int32_t> type_offsets(static_cast<std::size_t>(c.type));
  for (auto& o : type_offsets) {
    o = static_cast<std::int32_t>(r.Int(4));
    r.Skip(2);  // isdst, designation index
  }
  r.Skip(static_cast<std::size_t>(c.chars) + static_cast<std::size_t>(c.leap) * (width + 4) +
         static_cast<std::size_t>(c.isstd) + static_cast<std::size_t>(c.isut));
  tz.initial_offset_ = type_offsets[0];
  for (std::size_t i = 0; i < times.size(); ++i) {
    if (idx[i] >= type_offsets.size()) return unknown();
    if (!tz.transitions_.empty() && times[i] <= tz.transitions_.back()) return unknown();
    tz.transitions_.push_back(times[i]);
    tz.offsets_.push_back(type_offsets[idx[i]]);
  }
  if (width == 8 && r.pos() < data.size() && data[r.pos()] == '\n') {
    const auto end = data.find('\n', r.pos() + 1);
    if (end != std::string::npos && end > r.pos() + 1) {
      auto rule = ParseRule(data.substr(r.pos() + 1, end - r.pos() - 1));
      if (rule) {
        tz.rule_ = *rule;
        tz.has_rule_ = true;
      }
    }
  }
  return tz;
}

std::int32_t TimeZone::OffsetAt(UnixSeconds t) const {
  if (transitions_.empty() || t >= transitions_.back()) {
    if (has_rule_) return rule_.OffsetAt(t);
    return transitions_.empty() ? initial_offset_ : offsets_.back();
  }
  const auto it = std::upper_bound(transitions_.begin(), transitions_.end(), t);
  if (it == transitions_.begin()) return initial_offset_;
  return offsets_[static_cast<std::size_t>(it - transitions_.begin()) - 1];
}

std::vector<UnixSeconds> TimeZone::Resolve(UnixSeconds local) const {
  // Offsets around `local`: transitions are months apart, so the offsets a
  // day either side (and at it) are every offset that can apply.
  std::set<std::int32_t> offsets = {OffsetAt(local - kDay), OffsetAt(local),
                                    OffsetAt(local + kDay)};
  std::vector<UnixSeconds> out;
  for (const auto o : offsets) {
    const UnixSeconds u = local - o;
    if (OffsetAt(u) == o) out.push_back(u);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

UnixSeconds TimeZone::GapEnd(UnixSeconds local) const {
  const std::int32_t before = OffsetAt(local - kDay);
  const std::int32_t after = OffsetAt(local + kDay);
  // The transition lies in (local - after, local - before]: the first instant
  // whose offset is no longer `before`.
  UnixSeconds lo = local - std::max(before, after);
  UnixSeconds hi = local - std::min(before, after);
  while (lo < hi) {
    const UnixSeconds mid = lo + (hi - lo) / 2;
    if (OffsetAt(mid) != before) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

}  // namespace runner::schedule
