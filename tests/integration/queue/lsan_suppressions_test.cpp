// libpqxx 6.4 leaks the PGresult of a statement that fails because the
// connection broke (connection_base::exec_prepared / register_prepared error
// paths). The restart tests break connections on purpose; the leak is in the
// library, a few KiB per broken connection, and must not fail this suite under
// LeakSanitizer. LSan reads this hook when the binary is built with it.
extern "C" const char* __lsan_default_suppressions();  // NOLINT(bugprone-reserved-identifier)
extern "C" const char* __lsan_default_suppressions() {
  return "leak:pqxx::connection_base::exec_prepared\n"
         "leak:pqxx::connection_base::register_prepared\n"
         "leak:pqxx::connection_base::exec\n";
}
