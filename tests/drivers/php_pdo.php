<?php
// PDO pgsql through pgtenant, with its defaults: emulated prepares off, so
// PDO::prepare and PDO::query make a server-side statement named pdo_stmt_<n> and
// drop it with DEALLOCATE (sent as SQL) when the PDOStatement goes away; PDO::exec
// sends a simple query. Same checks and records as pgt_common.py.

require __DIR__ . '/pgt_common.php';

const DRIVER = 'pdo-pgsql';
$env = new Env();
$SQL = str_replace('{p}', '?', PREPARED_SQL);

function connect(string $mode, ?string $tenant = null): PDO
{
    global $env;
    $dsn = "pgsql:host=$env->host;port={$env->ports[$mode]};dbname=" . ($tenant ?? $env->tenant) . ';connect_timeout=10';
    // PDO::ERRMODE_EXCEPTION is PHP 8's default; set for clarity only.
    return new PDO($dsn, $env->user, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
}

function items(PDO $db): array
{
    return $db->query('SELECT name FROM items ORDER BY id')->fetchAll(PDO::FETCH_COLUMN);
}

/** The SQLSTATE of running $sql with PDO::query, or null if it succeeded. */
function query_error(PDO $db, string $sql): ?string
{
    try {
        $db->query($sql);
        return null;
    } catch (PDOException $e) {
        return $e->errorInfo[0] ?? (string) $e->getCode();
    }
}

function noise(string $mode, int $count, callable $body)
{
    global $env, $SQL;
    $open = function ($i) use ($mode, $env, $SQL) {
        $db = connect($mode, $i % 4 === 3 ? $env->other : null);
        return [$db, $db->prepare($SQL)];
    };
    $step = function ($c) {
        $c[1]->execute([7]);
        $c[1]->fetchAll();
    };
    return with_noise($count, $open, $step, $body);
}

function check_connect(string $mode)
{
    $db = connect($mode);
    [$database, $path] = $db->query("SELECT current_database(), current_setting('search_path')")->fetch(PDO::FETCH_NUM);
    expect_eq($database, 'erp', 'current_database()');
    expect(str_contains($path, 'tenant_acme'), "search_path is $path");
}

function check_isolation(string $mode)
{
    global $env;
    $a = connect($mode);
    $g = connect($mode, $env->other);
    $ca = $a->prepare('SELECT count(*) FROM items');
    $cg = $g->prepare('SELECT count(*) FROM items');
    for ($i = 0; $i < 20; $i++) {
        expect_eq(items($a), ACME_ITEMS, 'acme items');
        expect_eq(items($g), GLOBEX_ITEMS, 'globex items');
        $ca->execute();
        $cg->execute();
        expect_eq([$ca->fetchColumn(), $cg->fetchColumn()], [2, 3], 'prepared counts (acme, globex)');
    }
}

function check_prepared(string $mode)
{
    global $SQL;
    return noise($mode, 4, function () use ($mode, $SQL) {
        $db = connect($mode);
        $stmt = $db->prepare($SQL);
        $pids = [];
        for ($i = 0; $i < PREPARED_RUNS; $i++) {
            $stmt->execute([$i]);
            [$n, $count, $pid] = $stmt->fetch(PDO::FETCH_NUM);
            expect_eq([$n, $count], [$i + 1, count(ACME_ITEMS)], "execution $i");
            $pids[] = $pid;
        }
        $stmt = null; // DEALLOCATE pdo_stmt_<n>
        expect_eq(items($db), ACME_ITEMS, 'items after the statement was dropped');
        return switch_detail($mode, $pids);
    });
}

function check_prepare_again(string $mode)
{
    global $SQL;
    return noise($mode, 4, function () use ($mode, $SQL) {
        $db = connect($mode);
        $pids = [];
        for ($round = 0; $round < PREPARE_AGAIN_ROUNDS; $round++) {
            $stmt = $db->prepare($SQL);
            for ($i = 0; $i < PREPARE_AGAIN_RUNS; $i++) {
                $stmt->execute([$i]);
                [$n, $count, $pid] = $stmt->fetch(PDO::FETCH_NUM);
                expect_eq([$n, $count], [$i + 1, count(ACME_ITEMS)], "round $round, execution $i");
                $pids[] = $pid;
            }
            $stmt = null; // DEALLOCATE pdo_stmt_<n>
        }
        $detail = switch_detail($mode, $pids);
        return PREPARE_AGAIN_ROUNDS . '× (PDO::prepare, ' . PREPARE_AGAIN_RUNS
            . ' executions, the PDOStatement dropped: DEALLOCATE pdo_stmt_<n>)' . ($detail ? "; $detail" : '');
    });
}

function check_savepoint(string $mode)
{
    $t = "tx_$mode";
    $db = connect($mode);
    $db->exec("DELETE FROM $t WHERE id < 1000");
    $db->beginTransaction();
    $db->prepare("INSERT INTO $t VALUES (?, 'kept')")->execute([1]);
    $db->exec('SAVEPOINT sp');
    $db->prepare("INSERT INTO $t VALUES (?, 'rolled back')")->execute([2]);
    expect_eq(query_error($db, 'SELECT 1/0'), '22012', 'error of SELECT 1/0');
    $db->exec('ROLLBACK TO SAVEPOINT sp');
    $db->prepare("INSERT INTO $t VALUES (?, 'after the savepoint')")->execute([3]);
    $db->commit();
    $ids = $db->query("SELECT id FROM $t WHERE id < 1000 ORDER BY id")->fetchAll(PDO::FETCH_COLUMN);
    expect_eq($ids, [1, 3], 'rows after the transaction');
}

function check_error_rollback(string $mode)
{
    $t = "tx_$mode";
    $db = connect($mode);
    $db->beginTransaction();
    $db->prepare("INSERT INTO $t VALUES (?, 'never committed')")->execute([10]);
    expect_eq(query_error($db, 'SELECT * FROM no_such_table'), '42P01', 'error for a missing table');
    expect_eq(query_error($db, 'SELECT 1'), '25P02', 'error in the aborted transaction');
    $db->rollBack();
    for ($i = 0; $i < 5; $i++) {
        expect_eq(items($db), ACME_ITEMS, 'items after ROLLBACK');
    }
    $s = $db->prepare("SELECT count(*) FROM $t WHERE id = ?");
    $s->execute([10]);
    expect_eq($s->fetchColumn(), 0, 'rows of the rolled back transaction');
}

function check_copy_in(string $mode)
{
    global $env;
    $t = "copy_$mode";
    $db = connect($mode);
    $db->exec("TRUNCATE $t");
    expect($db->pgsqlCopyFromArray($t, copy_rows(), "\t", '\\\\N', 'id, name'), 'pgsqlCopyFromArray returned false');
    $want = [COPY_ROWS, md5(copy_data())];
    $got = $db->query(copy_check_sql($t))->fetch(PDO::FETCH_NUM);
    expect_eq($got, $want, 'count and checksum through the proxy');
    expect_eq(direct_copy_check($env, $t), $want, 'count and checksum on the server');
    return 'PDO::pgsqlCopyFromArray';
}

function check_copy_out(string $mode)
{
    $db = connect($mode);
    // pgsqlCopyToArray takes a table name and puts it after COPY: a parenthesized
    // query goes there as well.
    $rows = $db->pgsqlCopyToArray('(' . COPY_OUT_QUERY . ')');
    expect($rows !== false, 'pgsqlCopyToArray returned false');
    expect_eq(md5(implode('', $rows)), md5(copy_data()), 'checksum of COPY TO STDOUT');
    expect_eq(items($db), ACME_ITEMS, 'items after COPY');
    return "PDO::pgsqlCopyToArray('(query)')";
}

function wait_notification(PDO $db): string
{
    $n = $db->pgsqlGetNotify(PDO::FETCH_ASSOC, 5000);
    expect($n !== false, 'no notification within 5 s');
    return $n['payload'];
}

function check_listen_notify(string $mode)
{
    $channel = "jobs_$mode";
    $listener = connect($mode);
    $notifier = connect($mode);
    $listener->exec("LISTEN $channel");
    noise($mode, 3, function () use ($mode, $channel, $listener, $notifier) {
        $notifier->exec("NOTIFY $channel, 'hello from $mode'");
        expect_eq(wait_notification($listener), "hello from $mode", 'notification');
        $pids = [];
        for ($i = 0; $i < 20; $i++) {
            $pids[] = $listener->query('SELECT pg_backend_pid()')->fetchColumn();
        }
        expect_eq(count(array_unique($pids)), 1, 'server connections the listener used after LISTEN');
    });
    $notifier->prepare("SELECT pg_notify(?, 'again')")->execute([$channel]);
    expect_eq(wait_notification($listener), 'again', 'second notification');
    $detail = 'PDO::pgsqlGetNotify';
    return $mode === 'transaction' ? "$detail; LISTEN pins the client to its server connection" : $detail;
}

function check_bytea(string $mode)
{
    $data = random_bytes(1 << 20);
    $db = connect($mode);
    $s = $db->prepare('SELECT md5(b), length(b), b FROM (SELECT ?::bytea AS b) s');
    $s->bindValue(1, $data, PDO::PARAM_LOB);
    $s->execute();
    [$digest, $length, $back] = $s->fetch(PDO::FETCH_NUM);
    expect_eq([$digest, $length], [md5($data), strlen($data)], 'md5 and length on the server');
    $back = is_resource($back) ? stream_get_contents($back) : $back;
    expect($back === $data, 'the bytea came back different');
    return 'bindValue(..., PDO::PARAM_LOB); the result read as a stream';
}

function check_rows(string $mode)
{
    $db = connect($mode);
    $s = $db->prepare("SELECT g, 'row ' || g FROM generate_series(1, ?::int) g");
    $s->execute([RESULT_ROWS]);
    $rows = $s->fetchAll(PDO::FETCH_NUM);
    expect_eq(count($rows), RESULT_ROWS, 'rows');
    expect_eq(array_sum(array_column($rows, 0)), RESULT_SUM, 'sum');
    expect_eq($rows[RESULT_ROWS - 1][1], 'row ' . RESULT_ROWS, 'last row');
}

function check_concurrency(string $mode)
{
    global $env;
    reset_counters($env, $mode);
    $errors = wait_all(fork_all(CONCURRENT_CLIENTS, function ($k) use ($mode) {
        $db = connect($mode);
        $update = $db->prepare('UPDATE counters SET n = n + 1 WHERE mode = ?');
        $insert = $db->prepare('INSERT INTO events VALUES (?, ?, ?)');
        for ($seq = 0; $seq < TRANSACTIONS_PER_CLIENT; $seq++) {
            $db->beginTransaction();
            $update->execute([$mode]);
            $insert->execute([$mode, $k, $seq]);
            $db->commit();
        }
    }));
    expect(!$errors, implode('; ', array_slice($errors, 0, 3)));
    check_counters($env, $mode);
    return '50 processes, a connection each (as PHP-FPM workers)';
}

info(DRIVER, 'PHP PDO pgsql', PHP_VERSION . ' (libpq ' . PGSQL_LIBPQ_VERSION . ')',
    'defaults: emulated prepares off (server-side statements, DEALLOCATE as SQL when a PDOStatement goes away)');
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
    'cancel' => 'PDO has no API to cancel a running query',
    'bytea_1mb' => 'check_bytea',
    'rows_1e5' => 'check_rows',
    'concurrency' => 'check_concurrency',
]);
