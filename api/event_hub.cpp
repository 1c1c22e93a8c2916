#include "api/event_hub.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace runner::api {

EventSubscription::Wake EventSubscription::Next(std::vector<queue::Event>& out,
                                                std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, wait, [&] { return closed_ || overflow_ || !buffer_.empty(); });
  if (overflow_) return Wake::kOverflow;
  if (!buffer_.empty()) {
    out.insert(out.end(), std::make_move_iterator(buffer_.begin()),
               std::make_move_iterator(buffer_.end()));
    buffer_.clear();
    return Wake::kEvents;
  }
  return closed_ ? Wake::kClosed : Wake::kTimeout;
}

bool EventSubscription::WaitClosed(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, wait, [&] { return closed_; });
}

void EventSubscription::Push(const queue::Event& event) {
  {
    std::lock_guard lock(mu_);
    if (closed_ || overflow_) return;
    if (buffer_.size() >= capacity_) {
      overflow_ = true;
      buffer_.clear();
    } else {
      buffer_.push_back(event);
    }
  }
  cv_.notify_all();
}

void EventSubscription::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

EventHub::EventHub(queue::EventLog& store, EventHubOptions options, Clock& clock)
    : store_(store), options_(options), clock_(clock) {}

EventHub::~EventHub() { Stop(); }

void EventHub::Start() {
  std::lock_guard lock(mu_);
  if (poller_.joinable()) return;
  stopped_ = false;
  // Find the end of the table before serving, so an event written right after
  // Start() is live, not history. If the store is down, the poller retries.
  bool at_end = SkipToEnd();
  poller_ = std::jthread([this, at_end](std::stop_token stop) { PollLoop(stop, at_end); });
}

void EventHub::Stop() {
  std::vector<std::shared_ptr<EventSubscription>> subs;
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
    subs.swap(subscribers_);
  }
  if (poller_.joinable()) {
    poller_.request_stop();
    cv_.notify_all();
    poller_.join();
  }
  for (auto& s : subs) s->Close();
}

Result<std::shared_ptr<EventSubscription>> EventHub::Subscribe() {
  std::lock_guard lock(mu_);
  if (stopped_) return MakeError("unavailable", "the server is shutting down");
  if (subscribers_.size() >= options_.max_subscribers) {
    return MakeError("unavailable", "too many event streams are open (" +
                                        std::to_string(options_.max_subscribers) +
                                        "); close some or retry later");
  }
  auto sub = std::make_shared<EventSubscription>(options_.buffer_events);
  subscribers_.push_back(sub);
  return sub;
}

void EventHub::Unsubscribe(const std::shared_ptr<EventSubscription>& subscription) {
  std::lock_guard lock(mu_);
  std::erase(subscribers_, subscription);
}

std::size_t EventHub::subscribers() {
  std::lock_guard lock(mu_);
  return subscribers_.size();
}

void EventHub::Publish(const std::vector<queue::Event>& events) {
  std::lock_guard lock(mu_);
  for (const auto& sub : subscribers_) {
    for (const auto& e : events) sub->Push(e);
  }
}

bool EventHub::SkipToEnd() {
  for (;;) {
    auto page = store_.EventsAfter(low_, 1000);
    if (!page) {
      spdlog::warn("event hub: cannot read events code={} message={}", page.error().code,
                   page.error().message);
      return false;
    }
    if (!page->empty()) low_ = page->back().id;
    if (page->size() < 1000) return true;
  }
}

void EventHub::PollOnce() {
  // The poll's time is taken before it reads: a hole is dated from the read
  // that first saw it, not from the end of publishing (a subscriber may act
  // on what was published, the clock included, before the settle below).
  const auto now = clock_.Now();
  // Read from the lowest unsettled id, page by page; publish what is new.
  int64_t cursor = low_;
  for (;;) {
    auto page = store_.EventsAfter(cursor, options_.batch);
    if (!page) {
      spdlog::warn("event hub: cannot read events code={} message={}", page.error().code,
                   page.error().message);
      return;
    }
    std::vector<queue::Event> fresh;
    for (auto& e : *page) {
      if (published_.insert(e.id).second) fresh.push_back(std::move(e));
    }
    if (!fresh.empty()) Publish(fresh);
    if (page->size() < options_.batch) break;
    cursor = page->back().id;
  }
  // Advance low_ over contiguous published ids; a hole blocks it until it
  // fills or hole_wait passes.
  while (!published_.empty()) {
    auto first = published_.begin();
    if (*first == low_ + 1) {
      low_ = *first;
      published_.erase(first);
      hole_since_.reset();
      continue;
    }
    if (!hole_since_) hole_since_ = now;
    if (now - *hole_since_ < options_.hole_wait) break;
    low_ = *first - 1;  // give up on the hole(s) below the first published id
    hole_since_.reset();
  }
}

void EventHub::PollLoop(std::stop_token stop, bool at_end) {
  std::mutex wait_mu;
  while (!stop.stop_requested()) {
    if (!at_end) {
      at_end = SkipToEnd();
    } else {
      PollOnce();
    }
    std::unique_lock lock(wait_mu);
    clock_.WaitFor(cv_, lock, stop, options_.poll_interval, [] { return false; });
  }
}

}  // namespace runner::api
