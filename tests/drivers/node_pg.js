// node-postgres (pg) through pgtenant, with the driver's defaults. Prepared
// statements are pg's named queries ({name, text, values}); COPY goes through
// pg-copy-streams, the COPY companion of node-postgres. Same checks and records
// as tests/drivers/pgt_common.py (read it for what each feature means).
'use strict'

const crypto = require('crypto')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const pg = require('pg')
const copyStreams = require('pg-copy-streams')

const DRIVER = 'node-postgres'
const MODES = ['session', 'transaction']
const ACME_ITEMS = ['acme anvil', 'acme rocket skates']
const GLOBEX_ITEMS = ['globex hammock', 'globex doomsday device', 'globex coupon']
const PREPARED_RUNS = 1000
const COPY_ROWS = 10000
const RESULT_ROWS = 100000
const CONCURRENT_CLIENTS = 50
const TRANSACTIONS_PER_CLIENT = 20
const CANCEL_AFTER_MS = 300
const CANCEL_LIMIT_MS = 5000
const PREPARED_SQL =
  'SELECT $1::int + 1 AS n, (SELECT count(*) FROM items) AS items, pg_backend_pid() AS pid'
const COPY_OUT_SQL =
  "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, 10000) g ORDER BY g) TO STDOUT"
const copyCheckSql = (table) =>
  "SELECT count(*)::int AS n, md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) AS md5 FROM " +
  table

const env = process.env
const HOST = env.PGT_HOST
const PORTS = { session: Number(env.PGT_SESSION_PORT), transaction: Number(env.PGT_TXN_PORT) }
const TENANT = env.PGT_TENANT || 'acme'
const OTHER = env.PGT_OTHER_TENANT || 'globex'
const USER = env.PGT_USER || 'app'

function copyData() {
  const parts = []
  for (let i = 1; i <= COPY_ROWS; i++) parts.push(`${i}\trow-${i}-é\n`)
  return Buffer.from(parts.join(''), 'utf8')
}
const md5 = (buf) => crypto.createHash('md5').update(buf).digest('hex')

class CheckFailed extends Error {}
function expect(cond, msg) {
  if (!cond) throw new CheckFailed(msg)
}
function expectEq(got, want, what) {
  const g = JSON.stringify(got)
  const w = JSON.stringify(want)
  if (g !== w) throw new CheckFailed(`${what}: got ${g}, expected ${w}`)
}

function config(mode, tenant) {
  return {
    host: HOST,
    port: PORTS[mode],
    user: USER,
    database: tenant || TENANT,
    connectionTimeoutMillis: 10000,
  }
}
async function connect(mode, tenant) {
  const client = new pg.Client(config(mode, tenant))
  client.on('error', () => {})
  await client.connect()
  return client
}
async function direct() {
  const client = new pg.Client({ host: HOST, port: Number(env.PGT_DIRECT_PORT), user: 'postgres', database: 'erp' })
  await client.connect()
  return client
}
async function items(client) {
  const r = await client.query('SELECT name FROM items ORDER BY id')
  return r.rows.map((row) => row.name)
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Other clients running the same named statement (3 acme, 1 globex) until stopped.
async function withNoise(mode, count, body) {
  let stop = false
  const loops = []
  for (let i = 0; i < count; i++) {
    loops.push(
      (async () => {
        const c = await connect(mode, i % 4 === 3 ? OTHER : TENANT)
        try {
          while (!stop) await c.query({ name: 'pgt-prepared', text: PREPARED_SQL, values: [7] })
        } finally {
          await c.end()
        }
      })()
    )
  }
  try {
    return await body()
  } finally {
    stop = true
    const results = await Promise.allSettled(loops)
    const failed = results.filter((r) => r.status === 'rejected').map((r) => describe(r.reason))
    if (failed.length) throw new CheckFailed('background connections failed: ' + failed.join('; '))
  }
}

function switchDetail(mode, pids) {
  const n = new Set(pids).size
  if (mode === 'transaction') {
    expect(n > 1, `all ${pids.length} executions ran on one server: the check proves nothing`)
    return 'executions switched server connections'
  }
  expectEq(n, 1, 'server connections used by one session-mode client')
  return ''
}

async function checkConnect(mode) {
  const c = await connect(mode)
  try {
    const r = await c.query("SELECT current_database() AS db, current_setting('search_path') AS path")
    expectEq(r.rows[0].db, 'erp', 'current_database()')
    expect(r.rows[0].path.includes('tenant_acme'), `search_path is ${r.rows[0].path}`)
  } finally {
    await c.end()
  }
}

async function checkIsolation(mode) {
  const a = await connect(mode)
  const g = await connect(mode, OTHER)
  try {
    expectEq(await items(a), ACME_ITEMS, 'acme items')
    expectEq(await items(g), GLOBEX_ITEMS, 'globex items')
    for (let i = 0; i < 20; i++) {
      const q = { name: 'pgt-count', text: 'SELECT count(*)::int AS n FROM items' }
      const [ra, rg] = await Promise.all([a.query(q), g.query(q)])
      expectEq([ra.rows[0].n, rg.rows[0].n], [2, 3], 'named query counts (acme, globex)')
    }
  } finally {
    await a.end()
    await g.end()
  }
}

async function checkPrepared(mode) {
  const c = await connect(mode)
  try {
    return await withNoise(mode, 4, async () => {
      const pids = []
      for (let i = 0; i < PREPARED_RUNS; i++) {
        const r = await c.query({ name: 'pgt-prepared', text: PREPARED_SQL, values: [i] })
        const row = r.rows[0]
        expectEq([row.n, Number(row.items)], [i + 1, ACME_ITEMS.length], `execution ${i}`)
        pids.push(row.pid)
      }
      return switchDetail(mode, pids)
    })
  } finally {
    await c.end()
  }
}

async function checkSavepoint(mode) {
  const t = `tx_${mode}`
  const c = await connect(mode)
  try {
    await c.query(`DELETE FROM ${t} WHERE id < 1000`)
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${t} VALUES (1, 'kept')`)
    await c.query('SAVEPOINT sp')
    await c.query(`INSERT INTO ${t} VALUES (2, 'rolled back')`)
    let code = null
    try {
      await c.query('SELECT 1/0')
    } catch (e) {
      code = e.code
    }
    expectEq(code, '22012', 'error of SELECT 1/0')
    await c.query('ROLLBACK TO SAVEPOINT sp')
    await c.query(`INSERT INTO ${t} VALUES (3, 'after the savepoint')`)
    await c.query('COMMIT')
    const r = await c.query(`SELECT id FROM ${t} WHERE id < 1000 ORDER BY id`)
    expectEq(r.rows.map((x) => x.id), [1, 3], 'rows after the transaction')
  } finally {
    await c.end()
  }
}

async function checkErrorRollback(mode) {
  const t = `tx_${mode}`
  const c = await connect(mode)
  try {
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${t} VALUES (10, 'never committed')`)
    let code = null
    try {
      await c.query('SELECT * FROM no_such_table')
    } catch (e) {
      code = e.code
    }
    expectEq(code, '42P01', 'error for a missing table')
    code = null
    try {
      await c.query('SELECT 1')
    } catch (e) {
      code = e.code
    }
    expectEq(code, '25P02', 'error in the aborted transaction')
    await c.query('ROLLBACK')
    for (let i = 0; i < 5; i++) expectEq(await items(c), ACME_ITEMS, 'items after ROLLBACK')
    const r = await c.query(`SELECT count(*)::int AS n FROM ${t} WHERE id = 10`)
    expectEq(r.rows[0].n, 0, 'rows of the rolled back transaction')
  } finally {
    await c.end()
  }
}

async function checkCopyIn(mode) {
  const t = `copy_${mode}`
  const data = copyData()
  const c = await connect(mode)
  try {
    await c.query(`TRUNCATE ${t}`)
    const stream = c.query(copyStreams.from(`COPY ${t} (id, name) FROM STDIN`))
    const chunks = []
    for (let at = 0; at < data.length; at += 65536) chunks.push(data.subarray(at, at + 65536))
    await pipeline(Readable.from(chunks), stream)
    expectEq(stream.rowCount, COPY_ROWS, 'COPY row count')
    const r = await c.query(copyCheckSql(t))
    expectEq([r.rows[0].n, r.rows[0].md5], [COPY_ROWS, md5(data)], 'count and checksum through the proxy')
  } finally {
    await c.end()
  }
  const d = await direct()
  try {
    const r = await d.query(copyCheckSql(`tenant_acme.${t}`))
    expectEq([r.rows[0].n, r.rows[0].md5], [COPY_ROWS, md5(data)], 'count and checksum on the server')
  } finally {
    await d.end()
  }
}

async function checkCopyOut(mode) {
  const c = await connect(mode)
  try {
    const chunks = []
    const stream = c.query(copyStreams.to(COPY_OUT_SQL))
    await pipeline(
      stream,
      new Writable({
        write(chunk, _enc, done) {
          chunks.push(chunk)
          done()
        },
      })
    )
    expectEq(md5(Buffer.concat(chunks)), md5(copyData()), 'checksum of COPY TO STDOUT')
    expectEq(await items(c), ACME_ITEMS, 'items after COPY')
  } finally {
    await c.end()
  }
}

function nextNotification(queue, waiters) {
  if (queue.length) return Promise.resolve(queue.shift())
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new CheckFailed('no notification within 5 s')), 5000)
    waiters.push((payload) => {
      clearTimeout(timer)
      resolve(payload)
    })
  })
}

async function checkListenNotify(mode) {
  const channel = `jobs_${mode}`
  const listener = await connect(mode)
  const notifier = await connect(mode)
  const queue = []
  const waiters = []
  listener.on('notification', (n) => {
    if (waiters.length) waiters.shift()(n.payload)
    else queue.push(n.payload)
  })
  try {
    await listener.query(`LISTEN ${channel}`)
    await withNoise(mode, 3, async () => {
      await notifier.query(`NOTIFY ${channel}, 'hello from ${mode}'`)
      expectEq(await nextNotification(queue, waiters), `hello from ${mode}`, 'notification')
      const pids = new Set()
      for (let i = 0; i < 20; i++) pids.add((await listener.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
      expectEq(pids.size, 1, 'server connections the listener used after LISTEN')
    })
    await notifier.query("SELECT pg_notify($1, 'again')", [channel])
    expectEq(await nextNotification(queue, waiters), 'again', 'second notification')
  } finally {
    await listener.end()
    await notifier.end()
  }
  return mode === 'transaction' ? 'LISTEN pins the client to its server connection for the rest of its session' : ''
}

async function checkCancel(mode) {
  const c = await connect(mode)
  try {
    return await withNoise(mode, 2, async () => {
      const started = Date.now()
      const query = new pg.Query('SELECT pg_sleep(10)')
      const running = new Promise((resolve, reject) => {
        query.on('end', resolve)
        query.on('error', reject)
      })
      c.query(query)
      // node-postgres' cancel API: a second Client sends the CancelRequest.
      setTimeout(() => new pg.Client(config(mode)).cancel(c, query), CANCEL_AFTER_MS)
      let code = null
      try {
        await running
      } catch (e) {
        code = e.code
      }
      const elapsed = Date.now() - started
      expectEq(code, '57014', 'error of the cancelled query')
      expect(elapsed < CANCEL_LIMIT_MS, `cancel took ${elapsed} ms`)
      expectEq(await items(c), ACME_ITEMS, 'items after the cancel')
      return '57014 via Client.cancel(client, query)'
    })
  } finally {
    await c.end()
  }
}

async function checkBytea(mode) {
  const data = crypto.randomBytes(1 << 20)
  const c = await connect(mode)
  try {
    const r = await c.query('SELECT md5(b) AS md5, length(b) AS len, b FROM (SELECT $1::bytea AS b) s', [data])
    const row = r.rows[0]
    expectEq([row.md5, row.len], [md5(data), data.length], 'md5 and length on the server')
    expect(Buffer.compare(row.b, data) === 0, 'the bytea came back different')
  } finally {
    await c.end()
  }
}

async function checkRows(mode) {
  const c = await connect(mode)
  try {
    const r = await c.query("SELECT g, 'row ' || g AS t FROM generate_series(1, $1::int) g", [RESULT_ROWS])
    expectEq(r.rows.length, RESULT_ROWS, 'rows')
    let sum = 0
    for (const row of r.rows) sum += row.g
    expectEq(sum, (RESULT_ROWS * (RESULT_ROWS + 1)) / 2, 'sum')
    expectEq(r.rows[RESULT_ROWS - 1].t, `row ${RESULT_ROWS}`, 'last row')
  } finally {
    await c.end()
  }
}

async function checkConcurrency(mode) {
  const d = await direct()
  try {
    await d.query('UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1', [mode])
    await d.query('DELETE FROM tenant_acme.events WHERE mode = $1', [mode])
  } finally {
    await d.end()
  }
  const clients = await Promise.all(Array.from({ length: CONCURRENT_CLIENTS }, () => connect(mode)))
  try {
    const results = await Promise.allSettled(
      clients.map(async (c, k) => {
        for (let seq = 0; seq < TRANSACTIONS_PER_CLIENT; seq++) {
          await c.query('BEGIN')
          await c.query('UPDATE counters SET n = n + 1 WHERE mode = $1', [mode])
          await c.query('INSERT INTO events VALUES ($1, $2, $3)', [mode, k, seq])
          await c.query('COMMIT')
        }
      })
    )
    const failed = results
      .map((r, k) => (r.status === 'rejected' ? `client ${k}: ${describe(r.reason)}` : null))
      .filter(Boolean)
    expect(!failed.length, failed.slice(0, 3).join('; '))
  } finally {
    await Promise.allSettled(clients.map((c) => c.end()))
  }
  const total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
  const d2 = await direct()
  try {
    const n = (await d2.query('SELECT n::int AS n FROM tenant_acme.counters WHERE mode = $1', [mode])).rows[0].n
    const events = (await d2.query('SELECT count(*)::int AS n FROM tenant_acme.events WHERE mode = $1', [mode]))
      .rows[0].n
    expectEq([n, events], [total, total], `counter and events after ${total} transactions`)
  } finally {
    await d2.end()
  }
}

function describe(e) {
  if (e instanceof CheckFailed) return e.message
  if (e && e.code) return `${e.name || 'Error'} ${e.code}: ${e.message}`
  return `${(e && e.name) || 'Error'}: ${(e && e.message) || String(e)}`
}

function emit(record) {
  process.stdout.write(JSON.stringify(record) + '\n')
}

const CHECKS = {
  connect: checkConnect,
  isolation: checkIsolation,
  prepared: checkPrepared,
  savepoint: checkSavepoint,
  error_rollback: checkErrorRollback,
  copy_in: checkCopyIn,
  copy_out: checkCopyOut,
  listen_notify: checkListenNotify,
  cancel: checkCancel,
  bytea_1mb: checkBytea,
  rows_1e5: checkRows,
  concurrency: checkConcurrency,
}

async function main() {
  const version = require('pg/package.json').version
  const copyVersion = require('pg-copy-streams/package.json').version
  emit({
    driver: DRIVER,
    info: {
      name: 'node-postgres (pg)',
      version,
      notes: `defaults; named queries for prepared statements; COPY via pg-copy-streams ${copyVersion}`,
    },
  })
  for (const mode of MODES) {
    for (const [feature, fn] of Object.entries(CHECKS)) {
      process.stderr.write(`[${DRIVER} ${mode}] ${feature} ...\n`)
      const started = Date.now()
      const record = { driver: DRIVER, mode, feature }
      let timer
      try {
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new CheckFailed('no answer within 60 s (hung)')), 60000)
        })
        const detail = await Promise.race([fn(mode), timeout])
        record.status = 'pass'
        record.detail = detail || ''
      } catch (e) {
        record.status = 'fail'
        record.error = describe(e)
        process.stderr.write((e && e.stack) || String(e))
        process.stderr.write('\n')
      } finally {
        clearTimeout(timer)
      }
      record.ms = Date.now() - started
      emit(record)
    }
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(String((e && e.stack) || e) + '\n')
    process.exit(1)
  }
)
