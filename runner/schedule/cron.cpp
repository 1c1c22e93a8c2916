#include "runner/schedule/cron.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <sstream>
#include <vector>

namespace runner::schedule {
namespace {

namespace chr = std::chrono;

struct Field {
  const char* name;
  int lo;
  int hi;
  const char* const* names;  // 3-letter names from `lo`, or null
};

constexpr const char* kMonthNames[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                       "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr const char* kDayNames[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

constexpr std::array<Field, 5> kFields = {{{"minute", 0, 59, nullptr},
                                           {"hour", 0, 23, nullptr},
                                           {"day of month", 1, 31, nullptr},
                                           {"month", 1, 12, kMonthNames},
                                           {"day of week", 0, 7, kDayNames}}};

Error Bad(const Field& f, const std::string& what) {
  return MakeError("validation_failed", std::string("cron: ") + f.name + ": " + what);
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Result<int> Value(const Field& f, const std::string& text) {
  if (f.names != nullptr) {
    const std::string l = Lower(text);
    const int count = f.hi - f.lo + (f.hi == 7 ? 0 : 1);
    for (int i = 0; i < count; ++i) {
      if (l == f.names[i]) return f.lo + i;
    }
  }
  if (text.empty() || text.size() > 3 || !std::all_of(text.begin(), text.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      })) {
    return Bad(f, "'" + text + "' is not a number" + (f.names ? " or a name" : std::string()));
  }
  const int v = std::stoi(text);
  if (v < f.lo || v > f.hi) {
    return Bad(f, text + " is out of range " + std::to_string(f.lo) + "-" + std::to_string(f.hi));
  }
  return v;
}

// One comma-separated item: *, */n, a, a-b, a-b/n, a/n (a to the end, step n).
Result<void> ParseItem(const Field& f, const std::string& item, std::vector<bool>& bits) {
  std::string range = item;
  int step = 1;
  if (const auto slash = item.find('/'); slash != std::string::npos) {
    range = item.substr(0, slash);
    const std::string s = item.substr(slash + 1);
    if (s.empty() || s.size() > 3 || !std::all_of(s.begin(), s.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        })) {
      return Bad(f, "step '" + s + "' is not a number");
    }
    step = std::stoi(s);
    if (step < 1 || step > f.hi)
      return Bad(f, "step " + s + " is out of range 1-" + std::to_string(f.hi));
  }
  int lo = f.lo;
  int hi = f.hi;
  if (range != "*") {
    const auto dash = range.find('-');
    auto a = Value(f, range.substr(0, dash));
    if (!a) return a.error();
    lo = *a;
    if (dash != std::string::npos) {
      auto b = Value(f, range.substr(dash + 1));
      if (!b) return b.error();
      hi = *b;
      if (hi < lo) return Bad(f, "range '" + range + "' runs backwards");
    } else if (item.find('/') == std::string::npos) {
      hi = lo;
    }
  }
  for (int v = lo; v <= hi; v += step) bits[static_cast<std::size_t>(v)] = true;
  return {};
}

Result<std::vector<bool>> ParseField(const Field& f, const std::string& text) {
  std::vector<bool> bits(static_cast<std::size_t>(f.hi) + 1, false);
  if (text.empty()) return Bad(f, "empty");
  std::size_t start = 0;
  while (true) {
    const auto comma = text.find(',', start);
    const std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (item.empty()) return Bad(f, "empty list item in '" + text + "'");
    if (auto r = ParseItem(f, item, bits); !r) return r.error();
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return bits;
}

std::string ExpandMacro(const std::string& text) {
  const std::string l = Lower(text);
  if (l == "@hourly") return "0 * * * *";
  if (l == "@daily" || l == "@midnight") return "0 0 * * *";
  if (l == "@weekly") return "0 0 * * 0";
  if (l == "@monthly") return "0 0 1 * *";
  if (l == "@yearly" || l == "@annually") return "0 0 1 1 *";
  return text;
}

bool DayMatches(const CronExpr& e, const chr::year_month_day& ymd, const chr::weekday& wd) {
  const bool dom = e.days_of_month[static_cast<unsigned>(ymd.day())];
  const bool dow = e.days_of_week[wd.c_encoding()];
  if (e.dom_restricted && e.dow_restricted) return dom || dow;
  if (e.dom_restricted) return dom;
  if (e.dow_restricted) return dow;
  return true;
}

}  // namespace

Result<CronExpr> ParseCron(const std::string& input) {
  // Every minute listed one by one in every field is under 400 characters;
  // a longer text is a mistake or an attack, and is not echoed back.
  if (input.size() > kMaxCronLength) {
    return MakeError("validation_failed", "cron: " + std::to_string(input.size()) +
                                              " characters; at most " +
                                              std::to_string(kMaxCronLength));
  }
  const std::string text = ExpandMacro(input);
  if (!text.empty() && text[0] == '@') {
    return MakeError(
        "validation_failed",
        "cron: unknown macro '" + text +
            "' (use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)");
  }
  std::istringstream in(text);
  std::vector<std::string> parts;
  for (std::string p; in >> p;) parts.push_back(p);
  if (parts.size() != 5) {
    return MakeError("validation_failed",
                     "cron: '" + input + "' has " + std::to_string(parts.size()) +
                         " fields; it needs 5 (minute hour day-of-month month day-of-week)");
  }
  CronExpr e;
  std::array<std::vector<bool>, 5> bits;
  for (std::size_t i = 0; i < 5; ++i) {
    auto r = ParseField(kFields[i], parts[i]);
    if (!r) return r.error();
    bits[i] = std::move(*r);
  }
  for (std::size_t v = 0; v < 60; ++v) e.minutes[v] = bits[0][v];
  for (std::size_t v = 0; v < 24; ++v) e.hours[v] = bits[1][v];
  for (std::size_t v = 1; v < 32; ++v) e.days_of_month[v] = bits[2][v];
  for (std::size_t v = 1; v < 13; ++v) e.months[v] = bits[3][v];
  for (std::size_t v = 0; v < 8; ++v) {
    if (bits[4][v]) e.days_of_week[v % 7] = true;
  }
  e.dom_restricted = parts[2][0] != '*';
  e.dow_restricted = parts[4][0] != '*';
  return e;
}

std::optional<UnixSeconds> NextSlot(const CronExpr& e, const TimeZone& zone, UnixSeconds after) {
  constexpr std::int64_t kDay = 86400;
  const UnixSeconds local_after = after + zone.OffsetAt(after);
  // A local time L fires at the first instant whose wall clock reads L or
  // later (Resolve's first instant; GapEnd for a time a gap skips), and that
  // instant only grows with L. At `after` the wall clock reads local_after,
  // so every L <= local_after has fired by then: the search starts above it.
  // Just after a fall-back, the first few L above it fired in the first
  // pass of the hour and are passed over by the `at > after` test.
  // (Resolving every minute of the day before, as this did, cost a minutely
  // schedule 250 us a slot: its catch-up walk after a week down took 2.5 s.)
  std::int64_t day = local_after >= 0 ? local_after / kDay : (local_after - kDay + 1) / kDay;
  for (int i = 0; i < 9 * 366 + 2; ++i, ++day) {
    const chr::sys_days sd{chr::days{day}};
    const chr::year_month_day ymd{sd};
    if (!e.months[static_cast<unsigned>(ymd.month())]) continue;
    if (!DayMatches(e, ymd, chr::weekday{sd})) continue;
    for (std::size_t h = 0; h < 24; ++h) {
      if (!e.hours[h]) continue;
      if (day * kDay + static_cast<std::int64_t>(h * 3600 + 3540) <= local_after) continue;
      for (std::size_t m = 0; m < 60; ++m) {
        if (!e.minutes[m]) continue;
        const UnixSeconds local = day * kDay + static_cast<std::int64_t>(h * 3600 + m * 60);
        if (local <= local_after) continue;
        const auto instants = zone.Resolve(local);
        const UnixSeconds at = instants.empty() ? zone.GapEnd(local) : instants.front();
        if (at > after) return at;
      }
    }
  }
  return std::nullopt;
}

}  // namespace runner::schedule
