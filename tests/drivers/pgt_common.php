<?php
// Shared by the PHP driver scripts of the compatibility suite (PDO pgsql and the
// native pgsql functions): the same variables, constants and JSON records as
// tests/drivers/pgt_common.py, which says what each feature checks. PHP has no
// threads, so each check runs in a forked process (a hung one is killed after
// CHECK_TIMEOUT), and concurrent clients are forked processes too, as PHP-FPM's are.

const MODES = ['session', 'transaction'];
const FEATURES = ['connect', 'isolation', 'prepared', 'savepoint', 'error_rollback', 'copy_in',
    'copy_out', 'listen_notify', 'cancel', 'bytea_1mb', 'rows_1e5', 'concurrency'];
const ACME_ITEMS = ['acme anvil', 'acme rocket skates'];
const GLOBEX_ITEMS = ['globex hammock', 'globex doomsday device', 'globex coupon'];
const PREPARED_RUNS = 1000;
const COPY_ROWS = 10000;
const RESULT_ROWS = 100000;
const RESULT_SUM = RESULT_ROWS * (RESULT_ROWS + 1) / 2;
const CONCURRENT_CLIENTS = 50;
const TRANSACTIONS_PER_CLIENT = 20;
const CANCEL_AFTER_US = 300000;
const CANCEL_LIMIT = 5.0;
const CHECK_TIMEOUT = 60;
// Rounds of the prepare_again check: prepare, execute, drop the driver's way.
const PREPARE_AGAIN_ROUNDS = 20;
const PREPARE_AGAIN_RUNS = 10;
// {p} is the driver's placeholder.
const PREPARED_SQL = 'SELECT {p}::int + 1 AS n, (SELECT count(*) FROM items) AS items, pg_backend_pid() AS pid';
const COPY_OUT_QUERY = "SELECT g, 'row-' || g || '-é' FROM generate_series(1, 10000) g ORDER BY g";

class CheckFailed extends Exception
{
}

function copy_check_sql(string $table): string
{
    return "SELECT count(*) AS n, md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) AS md5 FROM $table";
}

/** The 10,000 rows of the COPY checks, one string per row without its newline. */
function copy_rows(): array
{
    $rows = [];
    for ($i = 1; $i <= COPY_ROWS; $i++) {
        $rows[] = "$i\trow-$i-é";
    }
    return $rows;
}

function copy_data(): string
{
    return implode("\n", copy_rows()) . "\n";
}

function expect(bool $condition, string $message): void
{
    if (!$condition) {
        throw new CheckFailed($message);
    }
}

function expect_eq($got, $want, string $what): void
{
    if ($got !== $want) {
        throw new CheckFailed("$what: got " . json_encode($got, JSON_UNESCAPED_UNICODE)
            . ', expected ' . json_encode($want, JSON_UNESCAPED_UNICODE));
    }
}

final class Env
{
    public string $host;
    public array $ports;
    public int $direct_port;
    public string $user;
    public string $tenant;
    public string $other;

    public function __construct()
    {
        foreach (['PGT_HOST', 'PGT_SESSION_PORT', 'PGT_TXN_PORT', 'PGT_DIRECT_PORT'] as $k) {
            if (getenv($k) === false) {
                fwrite(STDERR, "missing environment variable $k (run through cargo test --test drivers)\n");
                exit(2);
            }
        }
        $this->host = getenv('PGT_HOST');
        $this->ports = ['session' => (int) getenv('PGT_SESSION_PORT'), 'transaction' => (int) getenv('PGT_TXN_PORT')];
        $this->direct_port = (int) getenv('PGT_DIRECT_PORT');
        $this->user = getenv('PGT_USER') ?: 'app';
        $this->tenant = getenv('PGT_TENANT') ?: 'acme';
        $this->other = getenv('PGT_OTHER_TENANT') ?: 'globex';
    }
}

function emit(array $record): void
{
    fwrite(STDOUT, json_encode($record, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES) . "\n");
    fflush(STDOUT);
}

function info(string $driver, string $name, string $version, string $notes): void
{
    emit(['driver' => $driver, 'info' => ['name' => $name, 'version' => $version, 'notes' => $notes]]);
}

/** SQLSTATE and first line of a driver error, else its class and message. */
function describe_error(Throwable $e): string
{
    if ($e instanceof CheckFailed) {
        return $e->getMessage();
    }
    $first = strtok(trim($e->getMessage()), "\n");
    $code = $e instanceof PDOException ? ($e->errorInfo[0] ?? $e->getCode()) : ($e->sqlstate ?? null);
    return $code ? get_class($e) . " $code: $first" : get_class($e) . ": $first";
}

function now(): float
{
    return hrtime(true) / 1e9;
}

/**
 * Runs $checks[feature]($mode) for both modes, in the array's order, each in a
 * forked process. A string that is not a function name marks a feature the driver has no
 * API for (na, with that reason).
 */
function run_all(string $driver, array $checks): void
{
    $missing = array_diff(FEATURES, array_keys($checks));
    if ($missing) {
        fwrite(STDERR, "$driver: no check for " . implode(', ', $missing) . "\n");
        exit(2);
    }
    foreach (MODES as $mode) {
        foreach ($checks as $feature => $fn) {
            if (!is_callable($fn)) {
                emit(['driver' => $driver, 'mode' => $mode, 'feature' => $feature, 'status' => 'na',
                    'detail' => $fn, 'ms' => 0]);
                continue;
            }
            run_check($driver, $mode, $feature, $fn);
        }
    }
}

function run_check(string $driver, string $mode, string $feature, callable $fn): void
{
    fwrite(STDERR, "[$driver $mode] $feature ...\n");
    $record = ['driver' => $driver, 'mode' => $mode, 'feature' => $feature];
    $started = now();
    $pid = pcntl_fork();
    if ($pid === 0) {
        try {
            $detail = $fn($mode);
            $record += ['status' => 'pass', 'detail' => is_string($detail) ? $detail : ''];
        } catch (Throwable $e) {
            $record += ['status' => 'fail', 'error' => describe_error($e)];
            fwrite(STDERR, get_class($e) . ': ' . $e->getMessage() . "\n" . $e->getTraceAsString() . "\n");
        }
        $record['ms'] = (int) ((now() - $started) * 1000);
        emit($record);
        exit(0);
    }
    $deadline = $started + CHECK_TIMEOUT;
    while (pcntl_waitpid($pid, $status, WNOHANG) === 0) {
        if (now() > $deadline) {
            posix_kill($pid, SIGKILL);
            pcntl_waitpid($pid, $status);
            emit($record + ['status' => 'fail', 'error' => 'no answer within ' . CHECK_TIMEOUT . ' s (hung)',
                'ms' => (int) ((now() - $started) * 1000)]);
            return;
        }
        usleep(20000);
    }
    if (!pcntl_wifexited($status) || pcntl_wexitstatus($status) !== 0) {
        emit($record + ['status' => 'fail', 'error' => 'the check process died (status ' . $status . ')',
            'ms' => (int) ((now() - $started) * 1000)]);
    }
}

/**
 * Forks $count processes; process $i runs $body($i). For wait_all. A forked process
 * ends with SIGKILL, not exit: exit would run the destructors of the connections it
 * inherited, and those would end the parent's sessions (libpq sends Terminate).
 */
function fork_all(int $count, callable $body): array
{
    $dir = sys_get_temp_dir() . '/pgt-php-' . getmypid() . '-' . bin2hex(random_bytes(4));
    mkdir($dir);
    $pids = [];
    for ($i = 0; $i < $count; $i++) {
        $pid = pcntl_fork();
        if ($pid === 0) {
            try {
                $body($i);
                touch("$dir/$i.ok");
            } catch (Throwable $e) {
                file_put_contents("$dir/$i", describe_error($e));
            }
            posix_kill(getmypid(), SIGKILL);
        }
        $pids[$i] = $pid;
    }
    return [$dir, $pids];
}

/** Waits for forked processes (at most $timeout s in all) and returns their errors. */
function wait_all(array $forked, float $timeout = 120.0): array
{
    [$dir, $pids] = $forked;
    $errors = [];
    $deadline = now() + $timeout;
    foreach ($pids as $i => $pid) {
        while (pcntl_waitpid($pid, $status, WNOHANG) === 0) {
            if (now() > $deadline) {
                posix_kill($pid, SIGKILL);
                pcntl_waitpid($pid, $status);
                $errors[] = "process $i: did not finish";
                continue 2;
            }
            usleep(10000);
        }
        if (is_file("$dir/$i")) {
            $errors[] = "process $i: " . file_get_contents("$dir/$i");
            unlink("$dir/$i");
        } elseif (!is_file("$dir/$i.ok")) {
            $errors[] = "process $i: died (status $status)";
        }
        @unlink("$dir/$i.ok");
    }
    @rmdir($dir);
    return $errors;
}

/**
 * Other clients busy until $body returns, so that a transaction-mode client meets
 * other servers: $count processes, each opening a connection with $open($i) and
 * calling $step($conn) until told to stop.
 */
function with_noise(int $count, callable $open, callable $step, callable $body)
{
    $stop = sys_get_temp_dir() . '/pgt-php-stop-' . getmypid() . '-' . bin2hex(random_bytes(4));
    $forked = fork_all($count, function ($i) use ($open, $step, $stop) {
        $conn = $open($i);
        while (!file_exists($stop)) {
            $step($conn);
        }
    });
    try {
        usleep(50000);
        $result = $body();
    } finally {
        touch($stop);
        $errors = wait_all($forked, 20.0);
        unlink($stop);
    }
    expect(!$errors, 'background connections failed: ' . implode('; ', $errors));
    return $result;
}

/** Detail about the servers one client used; in transaction mode a client that never switched proves nothing. */
function switch_detail(string $mode, array $pids): string
{
    $n = count(array_unique($pids));
    if ($mode === 'transaction') {
        expect($n > 1, 'all ' . count($pids) . ' executions ran on one server: the check proves nothing');
        return 'executions switched server connections';
    }
    expect_eq($n, 1, 'server connections used by one session-mode client');
    return '';
}

/** Runs one query on the server itself (as postgres, database erp) and returns its rows. */
function direct_sql(Env $env, string $sql, array $params = []): array
{
    $d = pg_connect("host=$env->host port=$env->direct_port user=postgres dbname=erp", PGSQL_CONNECT_FORCE_NEW);
    expect($d !== false, 'cannot connect to the server directly');
    $r = pg_query_params($d, $sql, $params);
    expect($r !== false, 'direct query failed: ' . pg_last_error($d));
    $rows = pg_fetch_all($r, PGSQL_NUM) ?: [];
    pg_close($d);
    return $rows;
}

function reset_counters(Env $env, string $mode): void
{
    direct_sql($env, 'UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1', [$mode]);
    direct_sql($env, 'DELETE FROM tenant_acme.events WHERE mode = $1', [$mode]);
}

function check_counters(Env $env, string $mode): void
{
    $total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT;
    $n = (int) direct_sql($env, 'SELECT n FROM tenant_acme.counters WHERE mode = $1', [$mode])[0][0];
    $events = (int) direct_sql($env, 'SELECT count(*) FROM tenant_acme.events WHERE mode = $1', [$mode])[0][0];
    expect_eq([$n, $events], [$total, $total], "counter and events after $total transactions");
}

/** count and md5 of tenant_acme.$table, read on the server itself. */
function direct_copy_check(Env $env, string $table): array
{
    $row = direct_sql($env, copy_check_sql("tenant_acme.$table"))[0];
    return [(int) $row[0], $row[1]];
}
