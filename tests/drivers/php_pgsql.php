<?php
// PHP's native pgsql functions through pgtenant, with their defaults: named
// statements with pg_prepare / pg_execute (there is no call to drop one: DEALLOCATE is
// sent as SQL), parameters with pg_query_params (the unnamed statement), COPY with
// pg_copy_from / pg_copy_to. Same checks and records as pgt_common.py.

require __DIR__ . '/pgt_common.php';

const DRIVER = 'php-pgsql';
$env = new Env();
$SQL = str_replace('{p}', '$1', PREPARED_SQL);

/** A failed pgsql call: its message and, when known, its SQLSTATE. */
final class PgError extends Exception
{
    public ?string $sqlstate;

    public function __construct(string $message, ?string $sqlstate = null)
    {
        parent::__construct($message);
        $this->sqlstate = $sqlstate;
    }
}

// pgsql reports errors as warnings and returns false (warnings silenced with @ are
// left alone).
set_error_handler(function ($no, $message) {
    if (!(error_reporting() & $no)) {
        return false;
    }
    throw new PgError($message);
}, E_WARNING);

function connect(string $mode, ?string $tenant = null)
{
    global $env;
    $db = $tenant ?? $env->tenant;
    return pg_connect("host=$env->host port={$env->ports[$mode]} user=$env->user dbname=$db connect_timeout=10",
        PGSQL_CONNECT_FORCE_NEW);
}

function rows($c, string $sql, array $params = []): array
{
    $r = $params ? pg_query_params($c, $sql, $params) : pg_query($c, $sql);
    return pg_fetch_all($r, PGSQL_NUM) ?: [];
}

function items($c): array
{
    return array_column(rows($c, 'SELECT name FROM items ORDER BY id'), 0);
}

/** The SQLSTATE of running $sql (pg_send_query, pg_get_result), or null if it succeeded. */
function query_error($c, string $sql): ?string
{
    pg_send_query($c, $sql);
    $state = null;
    while ($r = pg_get_result($c)) {
        $state ??= pg_result_error_field($r, PGSQL_DIAG_SQLSTATE) ?: null;
    }
    return $state;
}

function noise(string $mode, int $count, callable $body)
{
    global $env, $SQL;
    $open = function ($i) use ($mode, $env, $SQL) {
        $c = connect($mode, $i % 4 === 3 ? $env->other : null);
        pg_prepare($c, 'pgt_stmt', $SQL);
        return $c;
    };
    $step = fn ($c) => pg_fetch_all(pg_execute($c, 'pgt_stmt', [7]));
    return with_noise($count, $open, $step, $body);
}

function check_connect(string $mode)
{
    $c = connect($mode);
    [$db, $path] = rows($c, "SELECT current_database(), current_setting('search_path')")[0];
    expect_eq($db, 'erp', 'current_database()');
    expect(str_contains($path, 'tenant_acme'), "search_path is $path");
}

function check_isolation(string $mode)
{
    global $env;
    $a = connect($mode);
    $g = connect($mode, $env->other);
    pg_prepare($a, 'pgt_count', 'SELECT count(*) FROM items');
    pg_prepare($g, 'pgt_count', 'SELECT count(*) FROM items');
    for ($i = 0; $i < 20; $i++) {
        expect_eq(items($a), ACME_ITEMS, 'acme items');
        expect_eq(items($g), GLOBEX_ITEMS, 'globex items');
        $counts = [pg_fetch_result(pg_execute($a, 'pgt_count', []), 0, 0),
            pg_fetch_result(pg_execute($g, 'pgt_count', []), 0, 0)];
        expect_eq($counts, ['2', '3'], 'prepared counts (acme, globex)');
    }
}

function check_prepared(string $mode)
{
    global $SQL;
    return noise($mode, 4, function () use ($mode, $SQL) {
        $c = connect($mode);
        pg_prepare($c, 'pgt_stmt', $SQL);
        $pids = [];
        for ($i = 0; $i < PREPARED_RUNS; $i++) {
            [$n, $count, $pid] = pg_fetch_row(pg_execute($c, 'pgt_stmt', [$i]));
            expect_eq([(int) $n, (int) $count], [$i + 1, count(ACME_ITEMS)], "execution $i");
            $pids[] = $pid;
        }
        return switch_detail($mode, $pids);
    });
}

function check_prepare_again(string $mode)
{
    global $SQL;
    return noise($mode, 4, function () use ($mode, $SQL) {
        $c = connect($mode);
        $pids = [];
        for ($round = 0; $round < PREPARE_AGAIN_ROUNDS; $round++) {
            pg_prepare($c, 'pgt_again', $SQL);
            for ($i = 0; $i < PREPARE_AGAIN_RUNS; $i++) {
                [$n, $count, $pid] = pg_fetch_row(pg_execute($c, 'pgt_again', [$i]));
                expect_eq([(int) $n, (int) $count], [$i + 1, count(ACME_ITEMS)], "round $round, execution $i");
                $pids[] = $pid;
            }
            pg_query($c, 'DEALLOCATE pgt_again');
        }
        $detail = switch_detail($mode, $pids);
        return PREPARE_AGAIN_ROUNDS . "× (pg_prepare('pgt_again'), " . PREPARE_AGAIN_RUNS
            . " pg_execute, pg_query('DEALLOCATE pgt_again'))" . ($detail ? "; $detail" : '');
    });
}

function check_savepoint(string $mode)
{
    $t = "tx_$mode";
    $c = connect($mode);
    pg_query($c, "DELETE FROM $t WHERE id < 1000");
    pg_query($c, 'BEGIN');
    pg_query_params($c, "INSERT INTO $t VALUES ($1, 'kept')", [1]);
    pg_query($c, 'SAVEPOINT sp');
    pg_query_params($c, "INSERT INTO $t VALUES ($1, 'rolled back')", [2]);
    expect_eq(query_error($c, 'SELECT 1/0'), '22012', 'error of SELECT 1/0');
    pg_query($c, 'ROLLBACK TO SAVEPOINT sp');
    pg_query_params($c, "INSERT INTO $t VALUES ($1, 'after the savepoint')", [3]);
    pg_query($c, 'COMMIT');
    expect_eq(array_column(rows($c, "SELECT id FROM $t WHERE id < 1000 ORDER BY id"), 0), ['1', '3'],
        'rows after the transaction');
}

function check_error_rollback(string $mode)
{
    $t = "tx_$mode";
    $c = connect($mode);
    pg_query($c, 'BEGIN');
    pg_query_params($c, "INSERT INTO $t VALUES ($1, 'never committed')", [10]);
    expect_eq(query_error($c, 'SELECT * FROM no_such_table'), '42P01', 'error for a missing table');
    expect_eq(query_error($c, 'SELECT 1'), '25P02', 'error in the aborted transaction');
    pg_query($c, 'ROLLBACK');
    for ($i = 0; $i < 5; $i++) {
        expect_eq(items($c), ACME_ITEMS, 'items after ROLLBACK');
    }
    expect_eq(rows($c, "SELECT count(*) FROM $t WHERE id = $1", [10])[0][0], '0', 'rows of the rolled back transaction');
}

function check_copy_in(string $mode)
{
    global $env;
    $t = "copy_$mode";
    $c = connect($mode);
    pg_query($c, "TRUNCATE $t");
    expect(pg_copy_from($c, $t, copy_rows()), 'pg_copy_from returned false');
    $want = [COPY_ROWS, md5(copy_data())];
    [$n, $sum] = rows($c, copy_check_sql($t))[0];
    expect_eq([(int) $n, $sum], $want, 'count and checksum through the proxy');
    expect_eq(direct_copy_check($env, $t), $want, 'count and checksum on the server');
    return 'pg_copy_from';
}

function check_copy_out(string $mode)
{
    $c = connect($mode);
    // pg_copy_to takes a table name and puts it after COPY: a parenthesized query
    // goes there as well.
    $rows = pg_copy_to($c, '(' . COPY_OUT_QUERY . ')');
    expect($rows !== false, 'pg_copy_to returned false');
    expect_eq(md5(implode('', $rows)), md5(copy_data()), 'checksum of COPY TO STDOUT');
    expect_eq(items($c), ACME_ITEMS, 'items after COPY');
    return "pg_copy_to(\$c, '(query)')";
}

function wait_notification($c): string
{
    $deadline = now() + 5;
    while (($n = pg_get_notify($c, PGSQL_ASSOC)) === false) {
        expect(now() < $deadline, 'no notification within 5 s');
        usleep(10000);
    }
    return $n['payload'];
}

function check_listen_notify(string $mode)
{
    $channel = "jobs_$mode";
    $listener = connect($mode);
    $notifier = connect($mode);
    pg_query($listener, "LISTEN $channel");
    noise($mode, 3, function () use ($mode, $channel, $listener, $notifier) {
        pg_query($notifier, "NOTIFY $channel, 'hello from $mode'");
        expect_eq(wait_notification($listener), "hello from $mode", 'notification');
        $pids = [];
        for ($i = 0; $i < 20; $i++) {
            $pids[] = rows($listener, 'SELECT pg_backend_pid()')[0][0];
        }
        expect_eq(count(array_unique($pids)), 1, 'server connections the listener used after LISTEN');
    });
    pg_query_params($notifier, "SELECT pg_notify($1, 'again')", [$channel]);
    expect_eq(wait_notification($listener), 'again', 'second notification');
    $detail = 'pg_get_notify, polled';
    return $mode === 'transaction' ? "$detail; LISTEN pins the client to its server connection" : $detail;
}

function check_cancel(string $mode)
{
    global $env;
    return noise($mode, 2, function () use ($mode, $env) {
        $c = connect($mode);
        $started = now();
        pg_send_query($c, 'SELECT pg_sleep(10)');
        usleep(CANCEL_AFTER_US);
        // Sends the CancelRequest, then reads and drops the query's results.
        pg_cancel_query($c);
        $elapsed = now() - $started;
        expect($elapsed < CANCEL_LIMIT, sprintf('cancel took %.1fs (the query ran to its end)', $elapsed));
        expect_eq(items($c), ACME_ITEMS, 'items after the cancel');
        $running = direct_sql($env, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'");
        expect_eq($running[0][0], '0', 'pg_sleep(10) still running on the server');
        return 'pg_send_query, then pg_cancel_query (it reads and drops the 57014 itself): the query ended at once';
    });
}

function check_bytea(string $mode)
{
    $data = random_bytes(1 << 20);
    $c = connect($mode);
    [$digest, $length, $back] = rows($c, 'SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s',
        [pg_escape_bytea($c, $data)])[0];
    expect_eq([$digest, (int) $length], [md5($data), strlen($data)], 'md5 and length on the server');
    expect(pg_unescape_bytea($back) === $data, 'the bytea came back different');
    return 'pg_query_params with pg_escape_bytea (text parameter), pg_unescape_bytea';
}

function check_rows(string $mode)
{
    $c = connect($mode);
    $rows = rows($c, "SELECT g, 'row ' || g FROM generate_series(1, $1::int) g", [RESULT_ROWS]);
    expect_eq(count($rows), RESULT_ROWS, 'rows');
    expect_eq(array_sum(array_column($rows, 0)), RESULT_SUM, 'sum');
    expect_eq($rows[RESULT_ROWS - 1][1], 'row ' . RESULT_ROWS, 'last row');
}

function check_concurrency(string $mode)
{
    global $env;
    reset_counters($env, $mode);
    $errors = wait_all(fork_all(CONCURRENT_CLIENTS, function ($k) use ($mode) {
        $c = connect($mode);
        for ($seq = 0; $seq < TRANSACTIONS_PER_CLIENT; $seq++) {
            pg_query($c, 'BEGIN');
            pg_query_params($c, 'UPDATE counters SET n = n + 1 WHERE mode = $1', [$mode]);
            pg_query_params($c, 'INSERT INTO events VALUES ($1, $2, $3)', [$mode, $k, $seq]);
            pg_query($c, 'COMMIT');
        }
    }));
    expect(!$errors, implode('; ', array_slice($errors, 0, 3)));
    check_counters($env, $mode);
    return '50 processes, a connection each (as PHP-FPM workers)';
}

info(DRIVER, 'PHP pgsql', PHP_VERSION . ' (libpq ' . PGSQL_LIBPQ_VERSION . ')',
    'defaults; pg_prepare/pg_execute for prepared statements, pg_query_params elsewhere');
run_all(DRIVER, [
    'connect' => 'check_connect',
    'isolation' => 'check_isolation',
    'prepared' => 'check_prepared',
    'prepare_again' => 'check_prepare_again',
    'savepoint' => 'check_savepoint',
    'error_rollback' => 'check_error_rollback',
    'copy_in' => 'check_copy_in',
    'copy_out' => 'check_copy_out',
    'listen_notify' => 'check_listen_notify',
    'cancel' => 'check_cancel',
    'bytea_1mb' => 'check_bytea',
    'rows_1e5' => 'check_rows',
    'concurrency' => 'check_concurrency',
]);
