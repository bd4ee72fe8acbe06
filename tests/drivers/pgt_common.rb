# Shared by the Ruby driver scripts of the compatibility suite (the pg gem and
# ActiveRecord): the same variables, constants and JSON records as
# tests/drivers/pgt_common.py, which says what each feature checks.

require 'digest'
require 'json'

module PgtCommon
  extend self

  MODES = %w[session transaction].freeze
  FEATURES = %w[connect isolation prepared savepoint error_rollback copy_in copy_out
                listen_notify cancel bytea_1mb rows_1e5 concurrency].freeze

  ACME_ITEMS = ['acme anvil', 'acme rocket skates'].freeze
  GLOBEX_ITEMS = ['globex hammock', 'globex doomsday device', 'globex coupon'].freeze

  PREPARED_RUNS = 1000
  COPY_ROWS = 10_000
  RESULT_ROWS = 100_000
  RESULT_SUM = RESULT_ROWS * (RESULT_ROWS + 1) / 2
  CONCURRENT_CLIENTS = 50
  TRANSACTIONS_PER_CLIENT = 20
  CANCEL_AFTER = 0.3
  CANCEL_LIMIT = 5.0
  CHECK_TIMEOUT = 60
  # Rounds of the prepare_again check: prepare, execute, drop the driver's way.
  PREPARE_AGAIN_ROUNDS = 20
  PREPARE_AGAIN_RUNS = 10

  PREPARED_SQL = 'SELECT $1::int + 1 AS n, (SELECT count(*) FROM items) AS items, ' \
                 'pg_backend_pid() AS pid'.freeze
  COPY_OUT_SQL = "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, #{COPY_ROWS}) g " \
                 'ORDER BY g) TO STDOUT'.freeze

  def copy_check_sql(table)
    "SELECT count(*), md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) FROM #{table}"
  end

  # The 10,000 rows of the COPY checks as COPY text (id TAB name NL), UTF-8 bytes.
  def copy_data
    (1..COPY_ROWS).map { |i| "#{i}\trow-#{i}-é\n" }.join.b
  end

  def md5(data)
    Digest::MD5.hexdigest(data)
  end

  class CheckFailed < StandardError; end

  def expect(condition, message)
    raise CheckFailed, message unless condition
  end

  def expect_eq(got, want, what)
    raise CheckFailed, "#{what}: got #{got.inspect}, expected #{want.inspect}" unless got == want
  end

  # Where the proxies and the server listen (set by tests/drivers.rs).
  class Env
    attr_reader :host, :user, :tenant, :other, :direct_port

    def initialize
      e = ENV
      %w[PGT_HOST PGT_SESSION_PORT PGT_TXN_PORT PGT_DIRECT_PORT].each do |k|
        abort "missing environment variable #{k} (run through cargo test --test drivers)" unless e[k]
      end
      @host = e['PGT_HOST']
      @ports = { 'session' => e['PGT_SESSION_PORT'].to_i, 'transaction' => e['PGT_TXN_PORT'].to_i }
      @direct_port = e['PGT_DIRECT_PORT'].to_i
      @user = e.fetch('PGT_USER', 'app')
      @tenant = e.fetch('PGT_TENANT', 'acme')
      @other = e.fetch('PGT_OTHER_TENANT', 'globex')
    end

    def port(mode)
      @ports.fetch(mode)
    end
  end

  PRINT_LOCK = Mutex.new

  def emit(record)
    PRINT_LOCK.synchronize do
      $stdout.write(JSON.generate(record) + "\n")
      $stdout.flush
    end
  end

  def info(driver, name, version, notes)
    emit(driver: driver, info: { name: name, version: version, notes: notes })
  end

  # SQLSTATE and first line of a driver error, else its class and message.
  def describe_error(e)
    return e.message if e.is_a?(CheckFailed)

    pg = [e, e.cause].find { |x| x.respond_to?(:result) && x.result }
    code = pg&.result&.error_field(PG::PG_DIAG_SQLSTATE)
    first = e.message.to_s.strip.lines.first.to_s.strip
    code ? "#{e.class} #{code}: #{first}" : "#{e.class}: #{first}"
  end

  # Runs checks[feature].call(mode) for both modes, in the hash's order, each in a
  # thread with at most CHECK_TIMEOUT seconds (a hung check is left behind). A String
  # instead of a callable marks a feature the driver has no API for (na, with that
  # reason). before_mode.call(mode), if given, runs before a mode's checks. Then exits
  # at once, so that hung threads do not keep the script alive.
  def run_all(driver, checks, before_mode: nil)
    missing = FEATURES - checks.keys
    abort "#{driver}: no check for #{missing.join(', ')}" unless missing.empty?
    MODES.each do |mode|
      before_mode&.call(mode)
      checks.each do |feature, fn|
        if fn.is_a?(String)
          emit(driver: driver, mode: mode, feature: feature, status: 'na', detail: fn, ms: 0)
          next
        end
        run_check(driver, mode, feature, fn)
      end
    end
    $stdout.flush
    $stderr.flush
    exit!(0)
  end

  def run_check(driver, mode, feature, fn)
    $stderr.puts "[#{driver} #{mode}] #{feature} ..."
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    outcome = {}
    thread = Thread.new do
      outcome[:detail] = fn.call(mode)
    rescue Exception => e # rubocop:disable Lint/RescueException - every failure becomes a record
      outcome[:error] = describe_error(e)
      $stderr.puts "#{e.class}: #{e.message}\n  #{(e.backtrace || []).first(8).join("\n  ")}"
    end
    thread.report_on_exception = false
    record = { driver: driver, mode: mode, feature: feature }
    if thread.join(CHECK_TIMEOUT).nil?
      record.update(status: 'fail', error: "no answer within #{CHECK_TIMEOUT} s (hung)")
    elsif outcome.key?(:error)
      record.update(status: 'fail', error: outcome[:error])
    else
      detail = outcome[:detail]
      record.update(status: 'pass', detail: detail.is_a?(String) ? detail : '')
    end
    record[:ms] = ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000).to_i
    emit(record)
  end

  # Threads that keep other connections busy so that a transaction-mode client
  # meets other servers: each opens a connection with open.call(i) and calls
  # step.call(conn) until the block ends.
  def with_noise(count, open, step, close)
    stop = false
    errors = []
    threads = Array.new(count) do |i|
      Thread.new do
        conn = nil
        begin
          conn = open.call(i)
          step.call(conn) until stop
        rescue StandardError => e
          errors << describe_error(e)
        ensure
          begin
            close.call(conn) if conn
          rescue StandardError
            nil
          end
        end
      end
    end
    begin
      result = yield
    ensure
      stop = true
      threads.each { |t| t.join(10) }
    end
    expect(errors.empty?, "background connections failed: #{errors.join('; ')}")
    result
  end

  # Detail about the servers one client used; in transaction mode a client that
  # never switched proves nothing.
  def switch_detail(mode, pids)
    n = pids.uniq.size
    if mode == 'transaction'
      expect(n > 1, "all #{pids.size} executions ran on one server: the check proves nothing")
      return 'executions switched server connections'
    end
    expect_eq(n, 1, 'server connections used by one session-mode client')
    ''
  end
end
