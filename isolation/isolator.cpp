#include "isolation/isolator.h"

namespace runner::isolation {

std::string_view ToString(IsolationMode mode) {
  switch (mode) {
    case IsolationMode::kAuto:
      return "auto";
    case IsolationMode::kDocker:
      return "docker";
    case IsolationMode::kProcess:
      return "process";
  }
  return "auto";
}

std::optional<IsolationMode> ParseIsolationMode(std::string_view text) {
  if (text == "auto") return IsolationMode::kAuto;
  if (text == "docker") return IsolationMode::kDocker;
  if (text == "process") return IsolationMode::kProcess;
  return std::nullopt;
}

}  // namespace runner::isolation
