#pragma once

// A client for the Docker Engine HTTP API over its Unix socket, written with
// Boost.Beast/Asio and Boost.JSON (no docker CLI).
//
// Contract:
// - One fresh connection per call; every call has a deadline (connect
//   `connect_timeout`, then `call_timeout` for the whole exchange, or the
//   caller's deadline for streaming calls). A daemon that is down, hangs or
//   closes early yields Error{"isolation_unavailable"} naming the socket and
//   how to start dockerd; a reply that is not HTTP/JSON yields
//   Error{"internal"}. Nothing blocks forever.
// - The API version is negotiated once (lazily, on the first versioned call):
//   `/_ping` Api-Version and `/version` ApiVersion/MinAPIVersion; we speak
//   min(daemon, 1.45) and never below 1.41 (Engine 20.10). A daemon too old or
//   whose minimum is above 1.45 gives a clear error. Requests then go under
//   `/v1.NN/...`.
// - API errors keep the daemon's message; 404s map to `not_found`, or to
//   `image_not_found` for images (naming the image and how to build it).
//
// Thread-safety: an EngineClient may be shared by any number of threads; every
// method is safe to call concurrently (the negotiated version is guarded by a
// mutex). A PendingWait belongs to one thread at a time.

#include <array>
#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "isolation/docker/container_stats.h"
#include "isolation/docker/log_frames.h"

namespace runner::isolation::docker {

inline constexpr int kMinApiMinor = 41;  // Engine 20.10
inline constexpr int kMaxApiMinor = 45;

struct EngineClientOptions {
  std::string docker_host = "unix:///var/run/docker.sock";
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds call_timeout{30000};   // create, start, stop, remove, ...
  std::chrono::milliseconds quick_timeout{10000};  // ping, version, inspect, stats
};

struct VersionInfo {
  std::string version;          // Engine version, e.g. "20.10.24"
  std::string api_version;      // the daemon's newest API, e.g. "1.41"
  std::string min_api_version;  // the daemon's oldest API, e.g. "1.12"
};

struct ContainerState {
  std::string status;  // created, running, exited, ...
  bool running = false;
  bool oom_killed = false;
  int exit_code = 0;
  std::string error;
  std::string started_at;
  std::string finished_at;
};

struct ContainerSummary {
  std::string id;
  std::string state;
  std::map<std::string, std::string> labels;
};

struct LogsOptions {
  bool follow = true;
  bool stdout_stream = true;
  bool stderr_stream = true;
};

class HttpExchange;

// A `wait` request that has been registered with the daemon (its response
// header was read, so a container that exits right after start cannot be
// missed). Poll() until it yields the exit status.
class PendingWait {
 public:
  explicit PendingWait(std::unique_ptr<HttpExchange> exchange);
  ~PendingWait();
  PendingWait(const PendingWait&) = delete;
  PendingWait& operator=(const PendingWait&) = delete;

  // Waits up to `slice` for the container to exit. Returns nullopt while it
  // still runs, its StatusCode once it exited, or an error when the daemon
  // failed or closed the connection.
  Result<std::optional<int64_t>> Poll(std::chrono::milliseconds slice);

 private:
  std::unique_ptr<HttpExchange> exchange_;
  std::string body_;
};

// The output of a container attached with stdin, stdout and stderr (POST
// /attach, hijacked) once its stdin was written and closed: the same
// multiplexed frames as a logs follow stream, from the moment of the attach.
class AttachedOutput {
 public:
  explicit AttachedOutput(std::unique_ptr<HttpExchange> exchange);
  ~AttachedOutput();
  AttachedOutput(const AttachedOutput&) = delete;
  AttachedOutput& operator=(const AttachedOutput&) = delete;

  // Streams the frames to `sink` until the container's output ends (its
  // process exited), `stop` is requested or `deadline` passes (an Error with
  // code "cancelled" / "timed_out" in the last two cases).
  Status Follow(const FrameSink& sink, std::stop_token stop,
                std::chrono::steady_clock::time_point deadline);

 private:
  std::unique_ptr<HttpExchange> exchange_;
};

class EngineClient {
 public:
  explicit EngineClient(EngineClientOptions options = {});
  ~EngineClient();
  EngineClient(const EngineClient&) = delete;
  EngineClient& operator=(const EngineClient&) = delete;

  const EngineClientOptions& options() const { return options_; }
  const std::string& socket_path() const { return socket_path_; }

  // `/_ping`: the daemon's Api-Version header.
  Result<std::string> Ping();
  // `/version`.
  Result<VersionInfo> Version();
  // "1.NN" we speak with this daemon (negotiated once, then cached).
  Result<std::string> ApiVersion();

  Result<boost::json::object> Info();
  Result<boost::json::object> ImageInspect(std::string_view image);

  // POST /containers/create; returns the container id.
  Result<std::string> ContainerCreate(const boost::json::object& config,
                                      std::string_view name = {});
  Status ContainerStart(std::string_view id);
  // Registers `wait?condition=...` and returns once the daemon accepted it.
  Result<std::unique_ptr<PendingWait>> ContainerWaitBegin(std::string_view id,
                                                          std::string_view condition = "next-exit");
  Result<boost::json::object> ContainerInspect(std::string_view id);
  Result<ContainerState> ContainerInspectState(std::string_view id);

  // GET /containers/{id}/logs, demultiplexed. `sink` gets each payload piece
  // in order (type 3 = a daemon error). With follow, returns when the
  // container's output ends, `stop` is requested, or `deadline` passes (an
  // Error with code "timed_out" / "cancelled" in the last two cases).
  Status ContainerLogs(std::string_view id, const LogsOptions& options, const FrameSink& sink,
                       std::stop_token stop, std::chrono::steady_clock::time_point deadline);

  // One quick sample (`stream=false&one-shot=true`; precpu is empty: compute
  // CPU% against your previous sample).
  Result<ContainerStats> ContainerStatsOnce(std::string_view id);
  // Streaming stats, one sample per ~second, until `on_sample` returns false,
  // the container stops, `stop` is requested or `deadline` passes.
  Status ContainerStatsStream(std::string_view id,
                              const std::function<bool(const ContainerStats&)>& on_sample,
                              std::stop_token stop, std::chrono::steady_clock::time_point deadline);

  Status ContainerKill(std::string_view id, std::string_view signal = "KILL");
  // POST /stop?t=grace: SIGTERM (or the image's StopSignal), SIGKILL after grace.
  Status ContainerStop(std::string_view id, std::chrono::seconds grace);
  // DELETE with force (and anonymous volumes). A container already gone is OK.
  Status ContainerRemove(std::string_view id, bool force = true);
  // All containers (running or not) carrying every label ("key=value" or "key").
  Result<std::vector<ContainerSummary>> ContainerList(const std::vector<std::string>& labels);
  // POST /attach with stdin, stdout and stderr: once the daemon attached the
  // output (its 101 answer), writes `data` to the container's stdin and ends
  // it; the output follows on the returned stream. A container started with
  // StdinOnce loses nothing of its output this way if it writes only after
  // reading its stdin (the warm launcher).
  Result<std::unique_ptr<AttachedOutput>> ContainerAttach(std::string_view id,
                                                          std::string_view data);
  // POST /update with a Resources object, e.g. {"NanoCpus": 250000000}.
  Status ContainerUpdate(std::string_view id, const boost::json::object& resources);

 private:
  struct Response {
    unsigned status = 0;
    std::string body;
    std::string api_version_header;
  };
  // One request/response on a fresh connection; `versioned` prefixes /v1.NN.
  Result<Response> Call(std::string_view method, const std::string& target, bool versioned,
                        const std::string& body, std::chrono::milliseconds timeout);
  // Connects and sends, then reads the response header of a streaming call.
  Result<std::unique_ptr<HttpExchange>> Open(std::string_view method, const std::string& target,
                                             std::chrono::steady_clock::time_point deadline,
                                             const std::string& body = {}, bool upgrade = false);
  Error ApiError(const Response& response, std::string_view what) const;
  // A streaming GET of `target` (prefixed): its exchange once the head came
  // (by `deadline` or call_timeout), or the Engine's error for `what`.
  Result<std::unique_ptr<HttpExchange>> OpenStream(const std::string& target,
                                                   std::chrono::steady_clock::time_point deadline,
                                                   std::string_view what);
  // How a streamed body ended (ReadStream).
  enum class StreamEnd { kBodyDone, kSinkDone, kStopped, kDeadline };
  // Hands each chunk of `ex`'s body to `on_chunk` until the body ends, it
  // answers false, `stop` is requested or `deadline` passes; its error ends
  // the read too.
  Result<StreamEnd> ReadStream(HttpExchange& ex, std::stop_token stop,
                               std::chrono::steady_clock::time_point deadline,
                               const std::function<Result<bool>(std::string_view)>& on_chunk);
  Result<std::string> Prefix();

  EngineClientOptions options_;
  std::string socket_path_;
  std::mutex mu_;
  std::string api_version_;  // guarded by mu_; empty until negotiated
};

// Picks the API version to speak: min(daemon newest, 1.45), and at least 1.41.
// Errors name both versions. Pure; unit tested.
Result<std::string> NegotiateApiVersion(std::string_view daemon_api, std::string_view daemon_min);

// "unix:///var/run/docker.sock" -> "/var/run/docker.sock". Throws
// std::invalid_argument for anything but a unix:// URL (bad configuration).
std::string SocketPathFromHost(std::string_view docker_host);

}  // namespace runner::isolation::docker
