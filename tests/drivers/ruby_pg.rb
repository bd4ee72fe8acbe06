# The pg gem (Ruby) through pgtenant, with the driver's defaults: named prepared
# statements with PG::Connection#prepare / #exec_prepared (the gem has no call to
# drop one: DEALLOCATE is sent as SQL), parameters with #exec_params (unnamed
# statements), COPY with #copy_data. Same checks and records as pgt_common.py.

$LOAD_PATH.unshift(__dir__)
require 'pg'
require 'pgt_common'

include PgtCommon # rubocop:disable Style/MixinUsage

DRIVER = 'ruby-pg'.freeze
ENVIRONMENT = Env.new

def connect(mode, tenant = nil)
  PG.connect(host: ENVIRONMENT.host, port: ENVIRONMENT.port(mode), user: ENVIRONMENT.user,
             dbname: tenant || ENVIRONMENT.tenant, connect_timeout: 10)
end

def direct
  PG.connect(host: ENVIRONMENT.host, port: ENVIRONMENT.direct_port, user: 'postgres', dbname: 'erp')
end

def items(conn)
  conn.exec('SELECT name FROM items ORDER BY id').column_values(0)
end

def closing(*conns)
  yield(*conns)
ensure
  conns.each { |c| c&.close }
end

# Other clients running the same named statement (3 acme, 1 globex).
def noise(mode, count = 4, &block)
  open = lambda do |i|
    c = connect(mode, i % 4 == 3 ? ENVIRONMENT.other : nil)
    c.prepare('pgt_stmt', PREPARED_SQL)
    c
  end
  PgtCommon.with_noise(count, open, ->(c) { c.exec_prepared('pgt_stmt', [7]).values }, ->(c) { c.close }, &block)
end

def check_connect(mode)
  closing(connect(mode)) do |c|
    db, path = c.exec("SELECT current_database(), current_setting('search_path')").values.first
    expect_eq(db, 'erp', 'current_database()')
    expect(path.include?('tenant_acme'), "search_path is #{path}")
  end
  nil
end

def check_isolation(mode)
  closing(connect(mode), connect(mode, ENVIRONMENT.other)) do |a, g|
    a.prepare('pgt_count', 'SELECT count(*) FROM items')
    g.prepare('pgt_count', 'SELECT count(*) FROM items')
    20.times do
      expect_eq(items(a), ACME_ITEMS, 'acme items')
      expect_eq(items(g), GLOBEX_ITEMS, 'globex items')
      counts = [a.exec_prepared('pgt_count').getvalue(0, 0), g.exec_prepared('pgt_count').getvalue(0, 0)]
      expect_eq(counts, %w[2 3], 'prepared counts (acme, globex)')
    end
  end
  nil
end

def check_prepared(mode)
  closing(connect(mode)) do |c|
    noise(mode) do
      c.prepare('pgt_stmt', PREPARED_SQL)
      pids = (0...PREPARED_RUNS).map do |i|
        n, count, pid = c.exec_prepared('pgt_stmt', [i]).values.first
        expect_eq([n.to_i, count.to_i], [i + 1, ACME_ITEMS.size], "execution #{i}")
        pid
      end
      switch_detail(mode, pids)
    end
  end
end

# The gem's only way to drop a prepared statement is DEALLOCATE as SQL; the name is
# then free to prepare again.
def check_prepare_again(mode)
  closing(connect(mode)) do |c|
    noise(mode) do
      pids = []
      PREPARE_AGAIN_ROUNDS.times do |round|
        c.prepare('pgt_again', PREPARED_SQL)
        PREPARE_AGAIN_RUNS.times do |i|
          n, count, pid = c.exec_prepared('pgt_again', [i]).values.first
          expect_eq([n.to_i, count.to_i], [i + 1, ACME_ITEMS.size], "round #{round}, execution #{i}")
          pids << pid
        end
        c.exec('DEALLOCATE pgt_again')
      end
      detail = switch_detail(mode, pids)
      "#{PREPARE_AGAIN_ROUNDS}× prepare('pgt_again'), #{PREPARE_AGAIN_RUNS} exec_prepared, " \
        "exec('DEALLOCATE pgt_again')#{detail.empty? ? '' : "; #{detail}"}"
    end
  end
end

def check_savepoint(mode)
  table = "tx_#{mode}"
  closing(connect(mode)) do |c|
    c.exec("DELETE FROM #{table} WHERE id < 1000")
    c.transaction do
      c.exec_params("INSERT INTO #{table} VALUES ($1, 'kept')", [1])
      c.exec('SAVEPOINT sp')
      c.exec_params("INSERT INTO #{table} VALUES ($1, 'rolled back')", [2])
      begin
        c.exec('SELECT 1/0')
        raise CheckFailed, 'no error for SELECT 1/0'
      rescue PG::DivisionByZero
        nil
      end
      c.exec('ROLLBACK TO SAVEPOINT sp')
      c.exec_params("INSERT INTO #{table} VALUES ($1, 'after the savepoint')", [3])
    end
    ids = c.exec("SELECT id FROM #{table} WHERE id < 1000 ORDER BY id").column_values(0).map(&:to_i)
    expect_eq(ids, [1, 3], 'rows after the transaction')
  end
  nil
end

def check_error_rollback(mode)
  table = "tx_#{mode}"
  closing(connect(mode)) do |c|
    c.exec('BEGIN')
    c.exec_params("INSERT INTO #{table} VALUES ($1, 'never committed')", [10])
    begin
      c.exec('SELECT * FROM no_such_table')
      raise CheckFailed, 'no error for a missing table'
    rescue PG::UndefinedTable
      nil
    end
    begin
      c.exec('SELECT 1')
      raise CheckFailed, 'an aborted transaction accepted a query'
    rescue PG::InFailedSqlTransaction
      nil
    end
    c.exec('ROLLBACK')
    5.times { expect_eq(items(c), ACME_ITEMS, 'items after ROLLBACK') }
    n = c.exec_params("SELECT count(*) FROM #{table} WHERE id = $1", [10]).getvalue(0, 0).to_i
    expect_eq(n, 0, 'rows of the rolled back transaction')
  end
  nil
end

def check_copy_in(mode)
  table = "copy_#{mode}"
  data = copy_data
  closing(connect(mode)) do |c|
    c.exec("TRUNCATE #{table}")
    res = c.copy_data("COPY #{table} (id, name) FROM STDIN") do
      (0...data.bytesize).step(65_536) { |at| c.put_copy_data(data.byteslice(at, 65_536)) }
    end
    expect_eq(res.cmd_tuples, COPY_ROWS, 'COPY row count')
    got = c.exec(PgtCommon.copy_check_sql(table)).values.first
    expect_eq(got, [COPY_ROWS.to_s, md5(data)], 'count and checksum through the proxy')
  end
  closing(direct) do |d|
    got = d.exec(PgtCommon.copy_check_sql("tenant_acme.#{table}")).values.first
    expect_eq(got, [COPY_ROWS.to_s, md5(data)], 'count and checksum on the server')
  end
  nil
end

def check_copy_out(mode)
  closing(connect(mode)) do |c|
    out = String.new(encoding: Encoding::BINARY)
    c.copy_data(COPY_OUT_SQL) do
      while (row = c.get_copy_data)
        out << row.b
      end
    end
    expect_eq(md5(out), md5(copy_data), 'checksum of COPY TO STDOUT')
    expect_eq(items(c), ACME_ITEMS, 'items after COPY')
  end
  nil
end

def wait_notification(conn)
  payload = nil
  conn.wait_for_notify(5) { |_channel, _pid, p| payload = p }
  expect(!payload.nil?, 'no notification within 5 s')
  payload
end

def check_listen_notify(mode)
  channel = "jobs_#{mode}"
  closing(connect(mode), connect(mode)) do |listener, notifier|
    listener.exec("LISTEN #{channel}")
    noise(mode, 3) do
      notifier.exec("NOTIFY #{channel}, 'hello from #{mode}'")
      expect_eq(wait_notification(listener), "hello from #{mode}", 'notification')
      pids = Array.new(20) { listener.exec('SELECT pg_backend_pid()').getvalue(0, 0) }
      expect_eq(pids.uniq.size, 1, 'server connections the listener used after LISTEN')
    end
    notifier.exec_params("SELECT pg_notify($1, 'again')", [channel])
    expect_eq(wait_notification(listener), 'again', 'second notification')
  end
  mode == 'transaction' ? 'LISTEN pins the client to its server connection for the rest of its session' : nil
end

def check_cancel(mode)
  closing(connect(mode)) do |c|
    noise(mode, 2) do
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      canceller = Thread.new do
        sleep CANCEL_AFTER
        c.cancel
      end
      begin
        c.exec('SELECT pg_sleep(10)')
        raise CheckFailed, 'pg_sleep(10) was not cancelled'
      rescue PG::QueryCanceled
        nil
      ensure
        canceller.join
      end
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      expect(elapsed < CANCEL_LIMIT, format('cancel took %.1fs', elapsed))
      expect_eq(items(c), ACME_ITEMS, 'items after the cancel')
    end
  end
  'PG::QueryCanceled (57014) via PG::Connection#cancel'
end

def check_bytea(mode)
  data = Random.new.bytes(1 << 20)
  closing(connect(mode)) do |c|
    res = c.exec_params('SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s',
                        [{ value: data, type: 17, format: 1 }])
    digest, length, back = res.values.first
    expect_eq([digest, length.to_i], [md5(data), data.bytesize], 'md5 and length on the server')
    expect(PG::Connection.unescape_bytea(back) == data, 'the bytea came back different')
  end
  'binary parameter ({value:, type: 17, format: 1}), text result unescaped'
end

def check_rows(mode)
  closing(connect(mode)) do |c|
    res = c.exec_params("SELECT g, 'row ' || g FROM generate_series(1, $1::int) g", [RESULT_ROWS])
    expect_eq(res.ntuples, RESULT_ROWS, 'rows')
    expect_eq(res.column_values(0).sum(&:to_i), RESULT_SUM, 'sum')
    expect_eq(res.getvalue(RESULT_ROWS - 1, 1), "row #{RESULT_ROWS}", 'last row')
  end
  nil
end

def reset_counters(mode)
  closing(direct) do |d|
    d.exec_params('UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1', [mode])
    d.exec_params('DELETE FROM tenant_acme.events WHERE mode = $1', [mode])
  end
end

def counted(mode)
  closing(direct) do |d|
    n = d.exec_params('SELECT n FROM tenant_acme.counters WHERE mode = $1', [mode]).getvalue(0, 0).to_i
    events = d.exec_params('SELECT count(*) FROM tenant_acme.events WHERE mode = $1', [mode]).getvalue(0, 0).to_i
    [n, events]
  end
end

def check_concurrency(mode)
  reset_counters(mode)
  failures = Queue.new
  conns = Array.new(CONCURRENT_CLIENTS) { connect(mode) }
  begin
    threads = conns.each_with_index.map do |c, k|
      Thread.new do
        TRANSACTIONS_PER_CLIENT.times do |seq|
          c.transaction do
            c.exec_params('UPDATE counters SET n = n + 1 WHERE mode = $1', [mode])
            c.exec_params('INSERT INTO events VALUES ($1, $2, $3)', [mode, k, seq])
          end
        end
      rescue StandardError => e
        failures << "client #{k}: #{PgtCommon.describe_error(e)}"
      end
    end
    threads.each { |t| t.join(120) }
  ensure
    conns.each(&:close)
  end
  errors = Array.new(failures.size) { failures.pop }
  expect(errors.empty?, errors.first(3).join('; '))
  total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
  expect_eq(counted(mode), [total, total], "counter and events after #{total} transactions")
  nil
end

CHECKS = {
  'connect' => method(:check_connect),
  'isolation' => method(:check_isolation),
  'prepared' => method(:check_prepared),
  'prepare_again' => method(:check_prepare_again),
  'savepoint' => method(:check_savepoint),
  'error_rollback' => method(:check_error_rollback),
  'copy_in' => method(:check_copy_in),
  'copy_out' => method(:check_copy_out),
  'listen_notify' => method(:check_listen_notify),
  'cancel' => method(:check_cancel),
  'bytea_1mb' => method(:check_bytea),
  'rows_1e5' => method(:check_rows),
  'concurrency' => method(:check_concurrency)
}.freeze

PgtCommon.info(DRIVER, 'Ruby pg', "#{PG::VERSION} (libpq #{PG.library_version}, Ruby #{RUBY_VERSION})",
               'defaults; prepare/exec_prepared for prepared statements, exec_params elsewhere')
PgtCommon.run_all(DRIVER, CHECKS)
