# ActiveRecord (Rails' ORM, postgresql adapter on the pg gem) through pgtenant, with
# its defaults: prepared_statements: true, so every model query with binds is a named
# statement (a1, a2, ...) prepared once per connection and kept in the adapter's
# statement pool, which drops them with DEALLOCATE sent as SQL. Tenants are schemas
# (tenant_acme, tenant_globex) picked by the database name; one abstract class per
# tenant, as a Rails app with a database per tenant has. Same checks and records as
# pgt_common.py.

$LOAD_PATH.unshift(__dir__)
require 'logger'
require 'active_record'
require 'pg'
require 'pgt_common'

include PgtCommon # rubocop:disable Style/MixinUsage

DRIVER = 'activerecord'.freeze
ENVIRONMENT = Env.new
ActiveRecord::Base.logger = nil

class AcmeRecord < ActiveRecord::Base
  self.abstract_class = true
end

class GlobexRecord < ActiveRecord::Base
  self.abstract_class = true
end

class Item < AcmeRecord
  self.table_name = 'items'
end

# items with the server's pg_backend_pid(): a view, so that the model query is
# prepared (a select with an SQL fragment is not).
class ItemBackend < AcmeRecord
  self.table_name = 'item_backends'
end

class GlobexItem < GlobexRecord
  self.table_name = 'items'
end

class Counter < AcmeRecord
  self.primary_key = 'mode'
end

class Event < AcmeRecord
end

class TxSession < AcmeRecord
  self.table_name = 'tx_session'
end

class TxTransaction < AcmeRecord
  self.table_name = 'tx_transaction'
end

TX_MODELS = { 'session' => TxSession, 'transaction' => TxTransaction }.freeze

def config(mode, tenant = nil)
  # prepared_statements is true unless set; only the pool is sized for the
  # 50-connection check.
  { adapter: 'postgresql', host: ENVIRONMENT.host, port: ENVIRONMENT.port(mode),
    username: ENVIRONMENT.user, database: tenant || ENVIRONMENT.tenant,
    pool: CONCURRENT_CLIENTS + 5, connect_timeout: 10, checkout_timeout: 30 }
end

# Fresh pools for a mode (the previous mode's connections are closed).
def use_mode(mode)
  AcmeRecord.establish_connection(config(mode))
  GlobexRecord.establish_connection(config(mode, ENVIRONMENT.other))
end

def direct
  PG.connect(host: ENVIRONMENT.host, port: ENVIRONMENT.direct_port, user: 'postgres', dbname: 'erp')
end

# A connection of the acme pool for the block (the check runs in its own thread).
def acme(&block)
  AcmeRecord.connection_pool.with_connection(&block)
end

def statements(conn)
  conn.instance_variable_get(:@statements).length
end

def prepared_query(id)
  ItemBackend.where(id: id).take
end

# Other threads running the same model query on their own connections (3 acme,
# 1 globex).
def noise(count = 4, &block)
  open = lambda do |i|
    pool = i % 4 == 3 ? GlobexRecord.connection_pool : AcmeRecord.connection_pool
    [pool, pool.checkout]
  end
  step = lambda do |(pool, _conn)|
    # The thread's checked-out connection is the one a model query uses.
    model = pool == GlobexRecord.connection_pool ? GlobexItem : Item
    model.where(id: 1).take!
  end
  close = ->((pool, conn)) { pool.checkin(conn) }
  PgtCommon.with_noise(count, open, step, close, &block)
end

def check_connect(_mode)
  acme do |c|
    db, path = c.select_rows("SELECT current_database(), current_setting('search_path')").first
    expect_eq(db, 'erp', 'current_database()')
    expect(path.include?('tenant_acme'), "search_path is #{path}")
  end
  nil
end

def check_isolation(_mode)
  acme do
    GlobexRecord.connection_pool.with_connection do
      20.times do
        expect_eq(Item.order(:id).pluck(:name), ACME_ITEMS, 'acme items')
        expect_eq(GlobexItem.order(:id).pluck(:name), GLOBEX_ITEMS, 'globex items')
        expect_eq([Item.where(id: 1).take!.name, GlobexItem.where(id: 1).take!.name],
                  [ACME_ITEMS[0], GLOBEX_ITEMS[0]], 'prepared lookups (acme, globex)')
      end
    end
  end
  nil
end

def check_prepared(mode)
  acme do |c|
    noise do
      pids = (0...PREPARED_RUNS).map do |i|
        id = (i % 2) + 1
        row = prepared_query(id)
        expect(!row.nil?, "execution #{i}: no row")
        expect_eq(row.name, ACME_ITEMS[id - 1], "execution #{i}")
        row.pid
      end
      expect(statements(c) >= 1, 'ActiveRecord prepared no statement')
      detail = switch_detail(mode, pids)
      "ItemBackend.where(id:).take (one named statement)" \
        "#{detail.empty? ? '' : "; #{detail}"}"
    end
  end
end

# The adapter's statement pool drops its statements with DEALLOCATE (clear_cache!,
# as after a migration or a reconnect; also when statement_limit is reached); the
# next query prepares a new one.
def check_prepare_again(mode)
  acme do |c|
    noise do
      pids = []
      PREPARE_AGAIN_ROUNDS.times do |round|
        PREPARE_AGAIN_RUNS.times do |i|
          id = (i % 2) + 1
          row = prepared_query(id)
          expect(!row.nil?, "round #{round}, execution #{i}: no row")
          expect_eq(row.name, ACME_ITEMS[id - 1], "round #{round}, execution #{i}")
          pids << row.pid
        end
        expect(statements(c) >= 1, "round #{round}: ActiveRecord prepared no statement")
        c.clear_cache!
        expect_eq(statements(c), 0, "round #{round}: statements after clear_cache!")
      end
      detail = switch_detail(mode, pids)
      "#{PREPARE_AGAIN_ROUNDS}× (#{PREPARE_AGAIN_RUNS} model queries, connection.clear_cache!: " \
        "DEALLOCATE a<n>)#{detail.empty? ? '' : "; #{detail}"}"
    end
  end
end

def check_savepoint(mode)
  model = TX_MODELS.fetch(mode)
  acme do
    model.where('id < 1000').delete_all
    AcmeRecord.transaction do
      model.create!(id: 1, note: 'kept')
      begin
        AcmeRecord.transaction(requires_new: true) do # SAVEPOINT active_record_1
          model.create!(id: 2, note: 'rolled back')
          AcmeRecord.connection.select_value('SELECT 1/0')
        end
        raise CheckFailed, 'no error for SELECT 1/0'
      rescue ActiveRecord::StatementInvalid => e
        raise unless e.cause.is_a?(PG::DivisionByZero)
      end
      model.create!(id: 3, note: 'after the savepoint')
    end
    expect_eq(model.where('id < 1000').order(:id).pluck(:id), [1, 3], 'rows after the transaction')
  end
  'transaction(requires_new: true): SAVEPOINT, ROLLBACK TO SAVEPOINT'
end

def check_error_rollback(mode)
  model = TX_MODELS.fetch(mode)
  acme do |c|
    AcmeRecord.transaction do
      model.create!(id: 10, note: 'never committed')
      begin
        c.select_all('SELECT * FROM no_such_table')
        raise CheckFailed, 'no error for a missing table'
      rescue ActiveRecord::StatementInvalid => e
        raise unless e.cause.is_a?(PG::UndefinedTable)
      end
      begin
        Item.where(id: 1).take
        raise CheckFailed, 'an aborted transaction accepted a query'
      rescue ActiveRecord::StatementInvalid => e
        raise unless e.cause.is_a?(PG::InFailedSqlTransaction)
      end
      raise ActiveRecord::Rollback
    end
    5.times { expect_eq(Item.order(:id).pluck(:name), ACME_ITEMS, 'items after ROLLBACK') }
    expect_eq(model.where(id: 10).count, 0, 'rows of the rolled back transaction')
  end
  'transaction block ended by ActiveRecord::Rollback'
end

def check_copy_in(mode)
  table = "copy_#{mode}"
  data = copy_data
  acme do |c|
    c.execute("TRUNCATE #{table}")
    pg = c.raw_connection
    res = pg.copy_data("COPY #{table} (id, name) FROM STDIN") do
      (0...data.bytesize).step(65_536) { |at| pg.put_copy_data(data.byteslice(at, 65_536)) }
    end
    expect_eq(res.cmd_tuples, COPY_ROWS, 'COPY row count')
    got = c.select_rows(PgtCommon.copy_check_sql(table)).first
    expect_eq(got, [COPY_ROWS, md5(data)], 'count and checksum through the proxy')
    expect_eq(Item.where(id: 1).take!.name, ACME_ITEMS[0], 'a model query after COPY')
  end
  d = direct
  begin
    got = d.exec(PgtCommon.copy_check_sql("tenant_acme.#{table}")).values.first
    expect_eq(got, [COPY_ROWS.to_s, md5(data)], 'count and checksum on the server')
  ensure
    d.close
  end
  'connection.raw_connection.copy_data (ActiveRecord has no COPY API; the postgres-copy gem does this)'
end

def check_copy_out(_mode)
  acme do |c|
    out = String.new(encoding: Encoding::BINARY)
    pg = c.raw_connection
    pg.copy_data(COPY_OUT_SQL) do
      while (row = pg.get_copy_data)
        out << row.b
      end
    end
    expect_eq(md5(out), md5(copy_data), 'checksum of COPY TO STDOUT')
    expect_eq(Item.order(:id).pluck(:name), ACME_ITEMS, 'items after COPY')
  end
  'connection.raw_connection.copy_data (ActiveRecord has no COPY API)'
end

def wait_notification(pg)
  payload = nil
  pg.wait_for_notify(5) { |_channel, _pid, p| payload = p }
  expect(!payload.nil?, 'no notification within 5 s')
  payload
end

# As Action Cable's PostgreSQL adapter does: LISTEN on a connection of the pool,
# notifications read from its raw_connection.
def check_listen_notify(mode)
  channel = "jobs_#{mode}"
  pool = AcmeRecord.connection_pool
  listener = pool.checkout
  notifier = pool.checkout
  begin
    listener.execute("LISTEN #{channel}")
    noise(3) do
      notifier.execute("NOTIFY #{channel}, 'hello from #{mode}'")
      expect_eq(wait_notification(listener.raw_connection), "hello from #{mode}", 'notification')
      pids = Array.new(20) { listener.select_value('SELECT pg_backend_pid()') }
      expect_eq(pids.uniq.size, 1, 'server connections the listener used after LISTEN')
    end
    notifier.select_value("SELECT pg_notify(#{notifier.quote(channel)}, 'again')")
    expect_eq(wait_notification(listener.raw_connection), 'again', 'second notification')
    listener.execute("UNLISTEN #{channel}")
  ensure
    pool.checkin(listener)
    pool.checkin(notifier)
  end
  detail = 'connection.execute("LISTEN ..."), raw_connection.wait_for_notify (as Action Cable)'
  mode == 'transaction' ? "#{detail}; LISTEN pins the client to its server connection" : detail
end

def binary(name, value)
  ActiveRecord::Relation::QueryAttribute.new(name, value, ActiveRecord::Type::Binary.new)
end

def integer(name, value)
  ActiveRecord::Relation::QueryAttribute.new(name, value, ActiveRecord::Type::Integer.new)
end

def check_bytea(_mode)
  data = Random.new.bytes(1 << 20)
  acme do |c|
    res = c.exec_query('SELECT md5(b) AS md5, length(b) AS len, b FROM (SELECT $1::bytea AS b) s',
                       'bytea', [binary('b', data)], prepare: true)
    digest, length, back = res.cast_values.first
    expect_eq([digest, length], [md5(data), data.bytesize], 'md5 and length on the server')
    expect(back == data, 'the bytea came back different')
  end
  'exec_query(..., prepare: true) with an ActiveRecord::Type::Binary bind'
end

def check_rows(_mode)
  acme do |c|
    res = c.exec_query("SELECT g, 'row ' || g AS t FROM generate_series(1, $1::int) g", 'rows',
                       [integer('n', RESULT_ROWS)], prepare: true)
    rows = res.rows
    expect_eq(rows.size, RESULT_ROWS, 'rows')
    expect_eq(rows.sum { |r| r[0] }, RESULT_SUM, 'sum')
    expect_eq(rows.last[1], "row #{RESULT_ROWS}", 'last row')
  end
  nil
end

def check_concurrency(mode)
  d = direct
  begin
    d.exec_params('UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1', [mode])
    d.exec_params('DELETE FROM tenant_acme.events WHERE mode = $1', [mode])
  ensure
    d.close
  end
  failures = Queue.new
  threads = Array.new(CONCURRENT_CLIENTS) do |k|
    Thread.new do
      acme do
        TRANSACTIONS_PER_CLIENT.times do |seq|
          AcmeRecord.transaction do
            Counter.where(mode: mode).update_all('n = n + 1')
            Event.create!(mode: mode, worker: k, seq: seq)
          end
        end
      end
    rescue StandardError => e
      failures << "client #{k}: #{PgtCommon.describe_error(e)}"
    end
  end
  threads.each { |t| t.join(120) }
  errors = Array.new(failures.size) { failures.pop }
  expect(errors.empty?, errors.first(3).join('; '))
  total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
  d = direct
  begin
    n = d.exec_params('SELECT n FROM tenant_acme.counters WHERE mode = $1', [mode]).getvalue(0, 0).to_i
    events = d.exec_params('SELECT count(*) FROM tenant_acme.events WHERE mode = $1', [mode]).getvalue(0, 0).to_i
  ensure
    d.close
  end
  expect_eq([n, events], [total, total], "counter and events after #{total} transactions")
  '50 threads, a pooled connection each (pool: 55); update_all and create! in AcmeRecord.transaction'
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
  'cancel' => 'ActiveRecord has no API to cancel a running query',
  'bytea_1mb' => method(:check_bytea),
  'rows_1e5' => method(:check_rows),
  'concurrency' => method(:check_concurrency)
}.freeze

PgtCommon.info(DRIVER, 'ActiveRecord (postgresql adapter)',
               "#{ActiveRecord::VERSION::STRING} (pg #{PG::VERSION}, Ruby #{RUBY_VERSION})",
               'defaults: prepared_statements: true (statement pool, DEALLOCATE as SQL); pool: 55')

# Each mode gets its own pools, set up before its checks run.
PgtCommon.run_all(DRIVER, CHECKS, before_mode: method(:use_mode))
