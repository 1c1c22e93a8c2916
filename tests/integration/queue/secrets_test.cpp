#include <catch2/catch.hpp>
#include <memory>
#include <pqxx/pqxx>

#include "runner/queue/validation.h"
#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::secrets::SecretKey;
using runner::testing::TestDatabase;

namespace {

constexpr char kValue[] = "hunter2-swordfish-7d1e";

std::shared_ptr<const SecretKey> Key(unsigned char fill) {
  std::array<unsigned char, runner::secrets::kKeyBytes> bytes{};
  bytes.fill(fill);
  return std::make_shared<const SecretKey>(SecretKey::FromBytes(bytes));
}

StoreOptions WithKey(std::shared_ptr<const SecretKey> key) {
  StoreOptions o;
  o.secret_key = std::move(key);
  return o;
}

NewTask WithSecret() {
  NewTask nt = Echo();
  nt.env = {{"PLAIN", "visible"}};
  nt.secrets = {{"DEPLOY_TOKEN", kValue}, {"OTHER", "second-value"}};
  return nt;
}

// Every column of the task's row as text, bytea included (hex and escaped).
std::string RowText(const TestDatabase& db, const std::string& id) {
  pqxx::connection conn(db.conninfo());
  pqxx::nontransaction tx(conn);
  auto r = tx.exec_params(
      "SELECT t::text, coalesce(encode(t.secrets_sealed, 'escape'), '') FROM tasks t "
      "WHERE id = $1",
      id);
  return r[0][0].as<std::string>() + "\n" + r[0][1].as<std::string>();
}

}  // namespace

TEST_CASE("secrets are sealed in the row, named in answers and opened by a claim",
          "[queue][secrets]") {
  TestDatabase db;
  auto store = OpenStore(db, WithKey(Key(7)));
  auto submitted = store->Submit(WithSecret());
  REQUIRE(submitted.ok());
  const std::string id = submitted->task.id;
  CHECK(submitted->task.secret_names == std::vector<std::string>{"DEPLOY_TOKEN", "OTHER"});
  CHECK(submitted->task.secrets.empty());

  const std::string row = RowText(db, id);
  CHECK(row.find(kValue) == std::string::npos);
  CHECK(row.find("second-value") == std::string::npos);
  CHECK(row.find("DEPLOY_TOKEN") != std::string::npos);  // the names are not secret
  CHECK(Scalar(db, "SELECT length(secrets_sealed) > 40 FROM tasks WHERE id = '" + id + "'") == "t");

  auto got = store->Get(id);
  REQUIRE(got.ok());
  CHECK(got->secrets.empty());
  CHECK(got->secret_names.size() == 2);
  CHECK(got->env.count("DEPLOY_TOKEN") == 0);

  auto claimed = store->Claim(ClaimFor({"w1"}));
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 1);
  const Task& t = claimed->front();
  CHECK_FALSE(t.secrets_error.has_value());
  CHECK(t.secrets.at("DEPLOY_TOKEN") == kValue);
  CHECK(t.secrets.at("OTHER") == "second-value");

  // Final with no retry left: the ciphertext is gone from the row.
  REQUIRE(store->Finish(id, "w1", Report(TaskState::kSucceeded)).ok());
  CHECK(Scalar(db, "SELECT secrets_sealed IS NULL FROM tasks WHERE id = '" + id + "'") == "t");
  CHECK(store->Get(id)->secret_names.size() == 2);
}

TEST_CASE("a retry keeps the sealed secrets until the last attempt ends", "[queue][secrets]") {
  TestDatabase db;
  auto store = OpenStore(db, WithKey(Key(7)));
  NewTask nt = WithSecret();
  nt.max_attempts = 2;
  nt.backoff = 0;
  const std::string id = store->Submit(nt)->task.id;
  const std::string sealed = "SELECT secrets_sealed IS NULL FROM tasks WHERE id = '" + id + "'";
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  REQUIRE(*store->Finish(id, "w1", Report(TaskState::kFailed)) == FinishOutcome::kRetrying);
  CHECK(Scalar(db, sealed) == "f");
  auto again = store->Claim(ClaimFor({"w2"}));
  REQUIRE(again->size() == 1);
  CHECK(again->front().secrets.at("DEPLOY_TOKEN") == kValue);
  REQUIRE(*store->Finish(id, "w2", Report(TaskState::kFailed)) == FinishOutcome::kFinished);
  CHECK(Scalar(db, sealed) == "t");
}

TEST_CASE("a cancelled queued task and a finish-and-claim drop or open the secrets",
          "[queue][secrets]") {
  TestDatabase db;
  auto store = OpenStore(db, WithKey(Key(7)));
  NewTask later = WithSecret();
  later.delay = 3600;
  const std::string queued = store->Submit(later)->task.id;
  REQUIRE(store->Cancel(queued).ok());
  CHECK(Scalar(db, "SELECT secrets_sealed IS NULL FROM tasks WHERE id = '" + queued + "'") == "t");

  const std::string first = store->Submit(Echo())->task.id;
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  const std::string second = store->Submit(WithSecret())->task.id;
  auto both = store->FinishAndClaim(first, "w1", Report(TaskState::kSucceeded), ClaimFor({"w1"}));
  REQUIRE(both.ok());
  REQUIRE(both->next.has_value());
  CHECK(both->next->id == second);
  CHECK(both->next->secrets.at("DEPLOY_TOKEN") == kValue);
}

TEST_CASE("a node with another key or none fails to open, naming the keys", "[queue][secrets]") {
  TestDatabase db;
  auto sealer = OpenStore(db, WithKey(Key(7)));
  const std::string id = sealer->Submit(WithSecret())->task.id;

  SECTION("another key") {
    auto other = OpenStore(db, WithKey(Key(9)));
    auto claimed = other->Claim(ClaimFor({"w1"}));
    REQUIRE(claimed->size() == 1);
    const Task& t = claimed->front();
    CHECK(t.secrets.empty());
    REQUIRE(t.secrets_error.has_value());
    CHECK(t.secrets_error->code == "secrets_unavailable");
    CHECK(t.secrets_error->message.find(Key(7)->id()) != std::string::npos);
    CHECK(t.secrets_error->message.find(Key(9)->id()) != std::string::npos);
    CHECK(t.secrets_error->message.find(kValue) == std::string::npos);
  }
  SECTION("no key") {
    auto keyless = OpenStore(db);
    auto claimed = keyless->Claim(ClaimFor({"w1"}));
    REQUIRE(claimed->size() == 1);
    REQUIRE(claimed->front().secrets_error.has_value());
    CHECK(claimed->front().secrets_error->code == "secrets_unavailable");
    // And it refuses to take new secrets it could not seal.
    auto refused = keyless->Submit(WithSecret());
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().message.find("--secret-key-file") != std::string::npos);
  }
  SECTION("a blob moved onto another task's row does not open") {
    const std::string other = sealer->Submit(Echo())->task.id;
    pqxx::connection conn(db.conninfo());
    pqxx::nontransaction tx(conn);
    tx.exec_params(
        "UPDATE tasks SET secrets_sealed = (SELECT secrets_sealed FROM tasks WHERE id = $1),"
        " run_at = now() - interval '1 hour' WHERE id = $2",
        id, other);
    // Only the task carrying the moved blob is claimable (claims rotate by group).
    tx.exec_params("UPDATE tasks SET run_at = now() + interval '1 hour' WHERE id = $1", id);
    auto claimed = sealer->Claim(ClaimFor({"w1"}));
    REQUIRE(claimed->size() == 1);
    REQUIRE(claimed->front().id == other);
    CHECK(claimed->front().secrets_error.has_value());
  }
}

TEST_CASE("secrets follow the env name rules and a size cap", "[queue][secrets]") {
  TestDatabase db;
  auto store = OpenStore(db, WithKey(Key(7)));
  NewTask bad = Echo();
  bad.secrets = {{"1BAD", kValue}};
  auto r = store->Submit(bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == "validation_failed");
  CHECK(r.error().message.find("secrets") == 0);
  CHECK(r.error().message.find(kValue) == std::string::npos);

  NewTask both = Echo();
  both.env = {{"TOKEN", "a"}};
  both.secrets = {{"TOKEN", kValue}};
  r = store->Submit(both);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("secrets.TOKEN") == 0);

  NewTask big = Echo();
  big.secrets = {{"BIG", std::string(kMaxSecretsBytes, 'x')}};
  r = store->Submit(big);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("65536") != std::string::npos);
}
