// PostgreSQL JDBC (pgjdbc) through pgtenant: the common checks of
// tests/drivers/pgt_common.py plus batch inserts and the driver's startup
// parameters. Server-side prepared statements with prepareThreshold=1 for the
// prepared and batch checks; the driver's defaults everywhere else.
//
// Compiled by tests/drivers/setup.sh java into target/drivers/java; run by
// tests/drivers.rs with the PGT_* variables.

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TimeZone;
import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class JdbcDriverTest {
    static final String DRIVER = "jdbc";
    static final String[] MODES = {"session", "transaction"};
    static final List<String> ACME_ITEMS = Arrays.asList("acme anvil", "acme rocket skates");
    static final List<String> GLOBEX_ITEMS =
            Arrays.asList("globex hammock", "globex doomsday device", "globex coupon");
    static final int PREPARED_RUNS = 1000;
    static final int COPY_ROWS = 10_000;
    static final int RESULT_ROWS = 100_000;
    static final int CONCURRENT_CLIENTS = 50;
    static final int TRANSACTIONS_PER_CLIENT = 20;
    static final long CANCEL_AFTER_MS = 300;
    static final long CANCEL_LIMIT_MS = 5000;
    static final String PREPARED_SQL =
            "SELECT ?::int + 1 AS n, (SELECT count(*) FROM items) AS items, pg_backend_pid() AS pid";
    static final String COPY_OUT_SQL =
            "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, 10000) g ORDER BY g) TO STDOUT";

    static String host;
    static int sessionPort;
    static int transactionPort;
    static int directPort;
    static String user;
    static String tenant;
    static String other;

    interface Check {
        String run(String mode) throws Exception;
    }

    static class CheckFailed extends Exception {
        CheckFailed(String message) {
            super(message);
        }
    }

    static void expect(boolean cond, String message) throws CheckFailed {
        if (!cond) throw new CheckFailed(message);
    }

    static void expectEq(Object got, Object want, String what) throws CheckFailed {
        if (!String.valueOf(got).equals(String.valueOf(want))) {
            throw new CheckFailed(what + ": got " + got + ", expected " + want);
        }
    }

    // ------------------------------------------------------------------ connections

    static Connection connect(String mode, String db, Properties extra) throws SQLException {
        int port = mode.equals("session") ? sessionPort : transactionPort;
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("connectTimeout", "10");
        if (extra != null) props.putAll(extra);
        return DriverManager.getConnection("jdbc:postgresql://" + host + ":" + port + "/" + db, props);
    }

    static Connection connect(String mode) throws SQLException {
        return connect(mode, tenant, null);
    }

    static Properties prepareThreshold1() {
        Properties p = new Properties();
        p.setProperty("prepareThreshold", "1");
        return p;
    }

    static Connection direct() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        return DriverManager.getConnection("jdbc:postgresql://" + host + ":" + directPort + "/erp", props);
    }

    static List<String> items(Connection c) throws SQLException {
        List<String> out = new ArrayList<>();
        try (Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT name FROM items ORDER BY id")) {
            while (rs.next()) out.add(rs.getString(1));
        }
        return out;
    }

    static long scalar(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static String md5(byte[] data) throws Exception {
        StringBuilder sb = new StringBuilder();
        for (byte b : MessageDigest.getInstance("MD5").digest(data)) sb.append(String.format("%02x", b));
        return sb.toString();
    }

    static byte[] copyData() {
        StringBuilder sb = new StringBuilder();
        for (int i = 1; i <= COPY_ROWS; i++) sb.append(i).append("\trow-").append(i).append("-é\n");
        return sb.toString().getBytes(StandardCharsets.UTF_8);
    }

    static String copyCheckSql(String table) {
        return "SELECT count(*), md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) FROM "
                + table;
    }

    /** Other clients running the prepared statement (3 acme, 1 globex) until closed. */
    static class Noise implements AutoCloseable {
        final AtomicBoolean stop = new AtomicBoolean();
        final List<Thread> threads = new ArrayList<>();
        final List<String> errors = new ArrayList<>();

        Noise(String mode, int count, Properties props) {
            for (int i = 0; i < count; i++) {
                final String db = i % 4 == 3 ? other : tenant;
                Thread t = new Thread(() -> {
                    try (Connection c = connect(mode, db, props);
                            PreparedStatement ps = c.prepareStatement(PREPARED_SQL)) {
                        while (!stop.get()) {
                            ps.setInt(1, 7);
                            try (ResultSet rs = ps.executeQuery()) {
                                rs.next();
                            }
                        }
                    } catch (Exception e) {
                        synchronized (errors) {
                            errors.add(describe(e));
                        }
                    }
                });
                t.setDaemon(true);
                t.start();
                threads.add(t);
            }
        }

        Noise(String mode, int count) {
            this(mode, count, prepareThreshold1());
        }

        @Override
        public void close() throws Exception {
            stop.set(true);
            for (Thread t : threads) t.join(10_000);
            synchronized (errors) {
                expect(errors.isEmpty(), "background connections failed: " + String.join("; ", errors));
            }
        }
    }

    static String switchDetail(String mode, Set<Integer> pids, int runs) throws CheckFailed {
        if (mode.equals("transaction")) {
            expect(pids.size() > 1, "all " + runs + " executions ran on one server: the check proves nothing");
            return "executions switched server connections";
        }
        expectEq(pids.size(), 1, "server connections used by one session-mode client");
        return "";
    }

    // ------------------------------------------------------------------ checks

    static String checkConnect(String mode) throws Exception {
        try (Connection c = connect(mode);
                Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT current_database(), current_setting('search_path')")) {
            rs.next();
            expectEq(rs.getString(1), "erp", "current_database()");
            expect(rs.getString(2).contains("tenant_acme"), "search_path is " + rs.getString(2));
        }
        return "";
    }

    static String checkIsolation(String mode) throws Exception {
        try (Connection a = connect(mode);
                Connection g = connect(mode, other, null)) {
            expectEq(items(a), ACME_ITEMS, "acme items");
            expectEq(items(g), GLOBEX_ITEMS, "globex items");
            try (PreparedStatement pa = a.prepareStatement("SELECT count(*) FROM items");
                    PreparedStatement pg = g.prepareStatement("SELECT count(*) FROM items")) {
                for (int i = 0; i < 20; i++) {
                    long na;
                    long ng;
                    try (ResultSet rs = pa.executeQuery()) {
                        rs.next();
                        na = rs.getLong(1);
                    }
                    try (ResultSet rs = pg.executeQuery()) {
                        rs.next();
                        ng = rs.getLong(1);
                    }
                    expectEq(na + "," + ng, "2,3", "prepared counts (acme, globex)");
                }
            }
        }
        return "";
    }

    static String checkPrepared(String mode) throws Exception {
        try (Connection c = connect(mode, tenant, prepareThreshold1());
                Noise noise = new Noise(mode, 4);
                PreparedStatement ps = c.prepareStatement(PREPARED_SQL)) {
            Set<Integer> pids = new HashSet<>();
            for (int i = 0; i < PREPARED_RUNS; i++) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    expectEq(rs.getInt(1), i + 1, "execution " + i);
                    expectEq(rs.getLong(2), ACME_ITEMS.size(), "items seen by execution " + i);
                    pids.add(rs.getInt(3));
                }
            }
            expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), "the statement was not server-prepared");
            return switchDetail(mode, pids, PREPARED_RUNS);
        }
    }

    static String checkBatch(String mode) throws Exception {
        String table = "batch_" + mode;
        int rounds = 5;
        int perRound = 200;
        try (Connection c = connect(mode, tenant, prepareThreshold1());
                Noise noise = new Noise(mode, 3)) {
            try (Statement st = c.createStatement()) {
                st.executeUpdate("TRUNCATE " + table);
            }
            c.setAutoCommit(false);
            try (PreparedStatement ps =
                    c.prepareStatement("INSERT INTO " + table + " (id, x, label) VALUES (?, ?, ?)")) {
                for (int r = 0; r < rounds; r++) {
                    for (int i = 0; i < perRound; i++) {
                        int id = r * perRound + i;
                        ps.setInt(1, id);
                        ps.setDouble(2, id + 0.1);
                        ps.setString(3, "batch " + id);
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    expectEq(counts.length, perRound, "batch result count");
                    for (int n : counts) expect(n == 1 || n == Statement.SUCCESS_NO_INFO, "batch update count " + n);
                    c.commit();
                }
            }
            try (Statement st = c.createStatement();
                    ResultSet rs = st.executeQuery("SELECT id, x, label FROM " + table + " ORDER BY id")) {
                int n = 0;
                while (rs.next()) {
                    expectEq(rs.getInt(1), n, "id");
                    expectEq(rs.getDouble(2), n + 0.1, "x of row " + n);
                    expectEq(rs.getString(3), "batch " + n, "label of row " + n);
                    n++;
                }
                expectEq(n, rounds * perRound, "rows inserted");
            }
            c.commit();
        }
        return rounds + " batches of " + perRound + " inserts (PreparedStatement.addBatch/executeBatch)";
    }

    static String checkStartupParams(String mode) throws Exception {
        // Other clients with settings of their own share the servers.
        Properties noisy = prepareThreshold1();
        noisy.setProperty("ApplicationName", "pgt-noise");
        noisy.setProperty("options", "-c statement_timeout=123s");
        String zone = TimeZone.getDefault().getID();
        String[][] expected = {
            {"extra_float_digits", "3", "pgjdbc starts with 2, then runs SET extra_float_digits = 3"},
            {"application_name", "PostgreSQL JDBC Driver", "pgjdbc runs SET application_name"},
            {"DateStyle", "ISO, MDY", "startup parameter"},
            {"TimeZone", zone, "startup parameter, the JVM's zone"},
            {"client_encoding", "UTF8", "startup parameter"},
            {"statement_timeout", "0", "another client's startup option must not reach this one"},
        };
        int runs = 50;
        Set<Integer> pids = new HashSet<>();
        // Wrong value seen -> how many queries saw it.
        Map<String, Integer> wrong = new LinkedHashMap<>();
        try (Connection c = connect(mode);
                Noise noise = new Noise(mode, 4, noisy);
                Statement st = c.createStatement()) {
            for (int i = 0; i < runs; i++) {
                try (ResultSet rs = st.executeQuery(
                        "SELECT current_setting('extra_float_digits'), current_setting('application_name'), "
                                + "current_setting('DateStyle'), current_setting('TimeZone'), "
                                + "current_setting('client_encoding'), current_setting('statement_timeout'), "
                                + "0.1::float8 + 0.2::float8, pg_backend_pid()")) {
                    rs.next();
                    for (int k = 0; k < expected.length; k++) {
                        String got = rs.getString(k + 1);
                        if (!expected[k][1].equals(got)) {
                            wrong.merge(expected[k][0] + ": got " + got + ", expected " + expected[k][1] + " ("
                                    + expected[k][2] + ")", 1, Integer::sum);
                        }
                    }
                    if (rs.getDouble(7) != 0.1 + 0.2) {
                        wrong.merge("0.1::float8 + 0.2::float8: got " + rs.getString(7), 1, Integer::sum);
                    }
                    pids.add(rs.getInt(8));
                }
            }
        }
        if (!wrong.isEmpty()) {
            List<String> problems = new ArrayList<>();
            for (Map.Entry<String, Integer> w : wrong.entrySet()) {
                problems.add(w.getKey() + " in " + w.getValue() + " of " + runs + " queries");
            }
            throw new CheckFailed(String.join("; ", problems));
        }
        String switched = switchDetail(mode, pids, runs);
        return "extra_float_digits=3, DateStyle, TimeZone, client_encoding, application_name kept"
                + (switched.isEmpty() ? "" : "; " + switched);
    }

    static String checkSavepoint(String mode) throws Exception {
        String table = "tx_" + mode;
        try (Connection c = connect(mode); Statement st = c.createStatement()) {
            st.executeUpdate("DELETE FROM " + table + " WHERE id < 1000");
            c.setAutoCommit(false);
            st.executeUpdate("INSERT INTO " + table + " VALUES (1, 'kept')");
            Savepoint sp = c.setSavepoint();
            st.executeUpdate("INSERT INTO " + table + " VALUES (2, 'rolled back')");
            String state = null;
            try {
                st.executeQuery("SELECT 1/0").close();
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            expectEq(state, "22012", "SQLSTATE of SELECT 1/0");
            c.rollback(sp);
            st.executeUpdate("INSERT INTO " + table + " VALUES (3, 'after the savepoint')");
            c.commit();
            List<Integer> ids = new ArrayList<>();
            try (ResultSet rs = st.executeQuery("SELECT id FROM " + table + " WHERE id < 1000 ORDER BY id")) {
                while (rs.next()) ids.add(rs.getInt(1));
            }
            expectEq(ids, Arrays.asList(1, 3), "rows after the transaction");
            c.commit();
        }
        return "";
    }

    static String checkErrorRollback(String mode) throws Exception {
        String table = "tx_" + mode;
        try (Connection c = connect(mode); Statement st = c.createStatement()) {
            c.setAutoCommit(false);
            st.executeUpdate("INSERT INTO " + table + " VALUES (10, 'never committed')");
            String state = null;
            try {
                st.executeQuery("SELECT * FROM no_such_table").close();
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            expectEq(state, "42P01", "SQLSTATE for a missing table");
            state = null;
            try {
                st.executeQuery("SELECT 1").close();
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            expectEq(state, "25P02", "SQLSTATE in the aborted transaction");
            c.rollback();
            for (int i = 0; i < 5; i++) {
                expectEq(items(c), ACME_ITEMS, "items after ROLLBACK");
                c.commit();
            }
            expectEq(scalar(c, "SELECT count(*) FROM " + table + " WHERE id = 10"), 0, "rolled back rows");
            c.commit();
        }
        return "";
    }

    static String checkCopyIn(String mode) throws Exception {
        String table = "copy_" + mode;
        byte[] data = copyData();
        try (Connection c = connect(mode)) {
            try (Statement st = c.createStatement()) {
                st.executeUpdate("TRUNCATE " + table);
            }
            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            long rows = copy.copyIn("COPY " + table + " (id, name) FROM STDIN", new ByteArrayInputStream(data));
            expectEq(rows, COPY_ROWS, "COPY row count");
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(copyCheckSql(table))) {
                rs.next();
                expectEq(rs.getLong(1) + " " + rs.getString(2), COPY_ROWS + " " + md5(data),
                        "count and checksum through the proxy");
            }
        }
        try (Connection d = direct();
                Statement st = d.createStatement();
                ResultSet rs = st.executeQuery(copyCheckSql("tenant_acme." + table))) {
            rs.next();
            expectEq(rs.getLong(1) + " " + rs.getString(2), COPY_ROWS + " " + md5(data),
                    "count and checksum on the server");
        }
        return "";
    }

    static String checkCopyOut(String mode) throws Exception {
        try (Connection c = connect(mode)) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            long rows = copy.copyOut(COPY_OUT_SQL, out);
            expectEq(rows, COPY_ROWS, "COPY row count");
            expectEq(md5(out.toByteArray()), md5(copyData()), "checksum of COPY TO STDOUT");
            expectEq(items(c), ACME_ITEMS, "items after COPY");
        }
        return "";
    }

    static String nextNotification(PGConnection listener) throws Exception {
        PGNotification[] got = listener.getNotifications(5000);
        expect(got != null && got.length > 0, "no notification within 5 s");
        return got[0].getParameter();
    }

    static String checkListenNotify(String mode) throws Exception {
        String channel = "jobs_" + mode;
        try (Connection listener = connect(mode);
                Connection notifier = connect(mode);
                Statement ls = listener.createStatement();
                Statement ns = notifier.createStatement()) {
            ls.execute("LISTEN " + channel);
            PGConnection pg = listener.unwrap(PGConnection.class);
            try (Noise noise = new Noise(mode, 3)) {
                ns.execute("NOTIFY " + channel + ", 'hello from " + mode + "'");
                expectEq(nextNotification(pg), "hello from " + mode, "notification");
                Set<Long> pids = new HashSet<>();
                for (int i = 0; i < 20; i++) pids.add(scalar(listener, "SELECT pg_backend_pid()"));
                expectEq(pids.size(), 1, "server connections the listener used after LISTEN");
            }
            try (PreparedStatement ps = notifier.prepareStatement("SELECT pg_notify(?, 'again')")) {
                ps.setString(1, channel);
                ps.executeQuery().close();
            }
            expectEq(nextNotification(pg), "again", "second notification");
        }
        return mode.equals("transaction")
                ? "LISTEN pins the client to its server connection for the rest of its session"
                : "";
    }

    static String checkCancel(String mode) throws Exception {
        ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
        try (Connection c = connect(mode);
                Noise noise = new Noise(mode, 2);
                Statement st = c.createStatement()) {
            timer.schedule(() -> {
                try {
                    st.cancel();
                } catch (SQLException e) {
                    throw new RuntimeException(e);
                }
            }, CANCEL_AFTER_MS, TimeUnit.MILLISECONDS);
            long started = System.nanoTime();
            String state = null;
            try {
                st.execute("SELECT pg_sleep(10)");
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            long elapsed = (System.nanoTime() - started) / 1_000_000;
            expectEq(state, "57014", "SQLSTATE of the cancelled query");
            expect(elapsed < CANCEL_LIMIT_MS, "cancel took " + elapsed + " ms");
            expectEq(items(c), ACME_ITEMS, "items after the cancel");
            return "57014 via Statement.cancel()";
        } finally {
            timer.shutdownNow();
        }
    }

    static String checkBytea(String mode) throws Exception {
        byte[] data = new byte[1 << 20];
        new SecureRandom().nextBytes(data);
        try (Connection c = connect(mode);
                PreparedStatement ps =
                        c.prepareStatement("SELECT md5(b), length(b), b FROM (SELECT ?::bytea AS b) s")) {
            ps.setBytes(1, data);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                expectEq(rs.getString(1) + " " + rs.getInt(2), md5(data) + " " + data.length,
                        "md5 and length on the server");
                expect(Arrays.equals(rs.getBytes(3), data), "the bytea came back different");
            }
        }
        return "";
    }

    static String checkRows(String mode) throws Exception {
        try (Connection c = connect(mode);
                PreparedStatement ps =
                        c.prepareStatement("SELECT g, 'row ' || g FROM generate_series(1, ?) g")) {
            ps.setInt(1, RESULT_ROWS);
            long n = 0;
            long sum = 0;
            String last = null;
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    n++;
                    sum += rs.getInt(1);
                    last = rs.getString(2);
                }
            }
            expectEq(n, RESULT_ROWS, "rows");
            expectEq(sum, (long) RESULT_ROWS * (RESULT_ROWS + 1) / 2, "sum");
            expectEq(last, "row " + RESULT_ROWS, "last row");
        }
        return "";
    }

    static String checkConcurrency(String mode) throws Exception {
        try (Connection d = direct(); PreparedStatement a =
                        d.prepareStatement("UPDATE tenant_acme.counters SET n = 0 WHERE mode = ?");
                PreparedStatement b = d.prepareStatement("DELETE FROM tenant_acme.events WHERE mode = ?")) {
            a.setString(1, mode);
            a.executeUpdate();
            b.setString(1, mode);
            b.executeUpdate();
        }
        CyclicBarrier barrier = new CyclicBarrier(CONCURRENT_CLIENTS);
        List<String> failures = new ArrayList<>();
        List<Thread> threads = new ArrayList<>();
        for (int k = 0; k < CONCURRENT_CLIENTS; k++) {
            final int worker = k;
            Thread t = new Thread(() -> {
                try (Connection c = connect(mode)) {
                    barrier.await(60, TimeUnit.SECONDS);
                    c.setAutoCommit(false);
                    try (PreparedStatement up = c.prepareStatement("UPDATE counters SET n = n + 1 WHERE mode = ?");
                            PreparedStatement ins = c.prepareStatement("INSERT INTO events VALUES (?, ?, ?)")) {
                        for (int seq = 0; seq < TRANSACTIONS_PER_CLIENT; seq++) {
                            up.setString(1, mode);
                            up.executeUpdate();
                            ins.setString(1, mode);
                            ins.setInt(2, worker);
                            ins.setInt(3, seq);
                            ins.executeUpdate();
                            c.commit();
                        }
                    }
                } catch (Exception e) {
                    synchronized (failures) {
                        failures.add("client " + worker + ": " + describe(e));
                    }
                    barrier.reset();
                }
            });
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) t.join(120_000);
        synchronized (failures) {
            expect(failures.isEmpty(), String.join("; ", failures.subList(0, Math.min(3, failures.size()))));
        }
        long total = (long) CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT;
        try (Connection d = direct()) {
            long n = scalar(d, "SELECT n FROM tenant_acme.counters WHERE mode = '" + mode + "'");
            long events = scalar(d, "SELECT count(*) FROM tenant_acme.events WHERE mode = '" + mode + "'");
            expectEq(n + " " + events, total + " " + total, "counter and events after " + total + " transactions");
        }
        return "";
    }

    // ------------------------------------------------------------------ records

    static String describe(Throwable e) {
        if (e instanceof CheckFailed) return e.getMessage();
        if (e instanceof SQLException && ((SQLException) e).getSQLState() != null) {
            return e.getClass().getSimpleName() + " " + ((SQLException) e).getSQLState() + ": " + e.getMessage();
        }
        if (e instanceof BrokenBarrierException) return "another client failed first";
        return e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    static String json(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (ch < 0x20) sb.append(String.format("\\u%04x", (int) ch));
                    else sb.append(ch);
            }
        }
        return sb.append('"').toString();
    }

    static synchronized void emit(String line) {
        System.out.println(line);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> env = System.getenv();
        host = env.get("PGT_HOST");
        sessionPort = Integer.parseInt(env.get("PGT_SESSION_PORT"));
        transactionPort = Integer.parseInt(env.get("PGT_TXN_PORT"));
        directPort = Integer.parseInt(env.get("PGT_DIRECT_PORT"));
        user = env.getOrDefault("PGT_USER", "app");
        tenant = env.getOrDefault("PGT_TENANT", "acme");
        other = env.getOrDefault("PGT_OTHER_TENANT", "globex");

        emit("{\"driver\":" + json(DRIVER) + ",\"info\":{\"name\":\"PostgreSQL JDBC (pgjdbc)\",\"version\":"
                + json(org.postgresql.util.DriverInfo.DRIVER_VERSION + " (Java " + System.getProperty("java.version")
                        + ")")
                + ",\"notes\":\"prepareThreshold=1 for the prepared and batch checks, defaults elsewhere\"}}");

        Map<String, Check> checks = new LinkedHashMap<>();
        checks.put("connect", JdbcDriverTest::checkConnect);
        checks.put("isolation", JdbcDriverTest::checkIsolation);
        checks.put("prepared", JdbcDriverTest::checkPrepared);
        checks.put("batch", JdbcDriverTest::checkBatch);
        checks.put("startup_params", JdbcDriverTest::checkStartupParams);
        checks.put("savepoint", JdbcDriverTest::checkSavepoint);
        checks.put("error_rollback", JdbcDriverTest::checkErrorRollback);
        checks.put("copy_in", JdbcDriverTest::checkCopyIn);
        checks.put("copy_out", JdbcDriverTest::checkCopyOut);
        checks.put("listen_notify", JdbcDriverTest::checkListenNotify);
        checks.put("cancel", JdbcDriverTest::checkCancel);
        checks.put("bytea_1mb", JdbcDriverTest::checkBytea);
        checks.put("rows_1e5", JdbcDriverTest::checkRows);
        checks.put("concurrency", JdbcDriverTest::checkConcurrency);

        ExecutorService runner = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        for (String mode : MODES) {
            for (Map.Entry<String, Check> entry : checks.entrySet()) {
                String feature = entry.getKey();
                // By hand: java ... JdbcDriverTest [feature ...] runs only those.
                if (args.length > 0 && !Arrays.asList(args).contains(feature)) continue;
                System.err.println("[" + DRIVER + " " + mode + "] " + feature + " ...");
                long started = System.nanoTime();
                String status;
                String text;
                Future<String> result = runner.submit(() -> entry.getValue().run(mode));
                try {
                    text = result.get(60, TimeUnit.SECONDS);
                    status = "pass";
                } catch (TimeoutException e) {
                    result.cancel(true);
                    status = "fail";
                    text = "no answer within 60 s (hung)";
                } catch (java.util.concurrent.ExecutionException e) {
                    status = "fail";
                    text = describe(e.getCause());
                    e.getCause().printStackTrace();
                }
                long ms = (System.nanoTime() - started) / 1_000_000;
                emit("{\"driver\":" + json(DRIVER) + ",\"mode\":" + json(mode) + ",\"feature\":" + json(feature)
                        + ",\"status\":" + json(status) + ",\"" + (status.equals("pass") ? "detail" : "error")
                        + "\":" + json(text == null ? "" : text) + ",\"ms\":" + ms + "}");
            }
        }
        System.exit(0);
    }
}
