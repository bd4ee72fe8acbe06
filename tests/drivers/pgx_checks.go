// pgx v4 (Go) through pgtenant, with its defaults: the statement cache in prepare
// mode (every query a named statement lrupsc_<n>_<m>, prepared once per connection
// and reused; evicted ones dropped with `deallocate` sent as SQL), pgxpool for the
// concurrency check. Built offline from Debian's golang-github-jackc-pgx-v4-dev by
// tests/drivers/setup.sh. Same checks and records as pgt_common.py.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

func checkConnect(mode string) (string, error) {
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	var db, path string
	if err := c.QueryRow(bg, "SELECT current_database(), current_setting('search_path')").Scan(&db, &path); err != nil {
		return "", err
	}
	if err := expectEq(db, "erp", "current_database()"); err != nil {
		return "", err
	}
	if !strings.Contains(path, "tenant_acme") {
		return "", failf("search_path is %s", path)
	}
	return "", nil
}

func checkIsolation(mode string) (string, error) {
	a, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer a.Close(bg)
	g, err := connect(mode, env["PGT_OTHER_TENANT"])
	if err != nil {
		return "", err
	}
	defer g.Close(bg)
	for i := 0; i < 20; i++ {
		if err := expectItems(a, acmeItems, "acme items"); err != nil {
			return "", err
		}
		if err := expectItems(g, globexItems, "globex items"); err != nil {
			return "", err
		}
		var na, ng int64
		if err := a.QueryRow(bg, "SELECT count(*) FROM items WHERE id > $1", 0).Scan(&na); err != nil {
			return "", err
		}
		if err := g.QueryRow(bg, "SELECT count(*) FROM items WHERE id > $1", 0).Scan(&ng); err != nil {
			return "", err
		}
		if err := expectEq([]int64{na, ng}, []int64{2, 3}, "counts (acme, globex)"); err != nil {
			return "", err
		}
	}
	return "", nil
}

func checkPrepared(mode string) (string, error) {
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	return withNoise(mode, 4, func() (string, error) {
		var pids []int32
		for i := 0; i < preparedRuns; i++ {
			var n, count int64
			var pid int32
			if err := c.QueryRow(bg, preparedSQL, i).Scan(&n, &count, &pid); err != nil {
				return "", fmt.Errorf("execution %d: %w", i, err)
			}
			if err := expectEq([]int64{n, count}, []int64{int64(i + 1), int64(len(acmeItems))}, fmt.Sprintf("execution %d", i)); err != nil {
				return "", err
			}
			pids = append(pids, pid)
		}
		if c.StatementCache().Len() < 1 {
			return "", failf("pgx did not cache the statement")
		}
		return switchDetail(mode, pids)
	})
}

// pgx's own calls: Conn.Prepare under a name, queries by that name, Conn.Deallocate
// (`deallocate "name"` as SQL), the same name prepared again.
func checkPrepareAgain(mode string) (string, error) {
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	detail, err := withNoise(mode, 4, func() (string, error) {
		var pids []int32
		for round := 0; round < prepareAgainRounds; round++ {
			if _, err := c.Prepare(bg, "pgt_again", preparedSQL); err != nil {
				return "", fmt.Errorf("round %d, Prepare: %w", round, err)
			}
			for i := 0; i < prepareAgainRuns; i++ {
				var n, count int64
				var pid int32
				if err := c.QueryRow(bg, "pgt_again", i).Scan(&n, &count, &pid); err != nil {
					return "", fmt.Errorf("round %d, execution %d: %w", round, i, err)
				}
				if err := expectEq([]int64{n, count}, []int64{int64(i + 1), int64(len(acmeItems))}, fmt.Sprintf("round %d, execution %d", round, i)); err != nil {
					return "", err
				}
				pids = append(pids, pid)
			}
			if err := c.Deallocate(bg, "pgt_again"); err != nil {
				return "", fmt.Errorf("round %d, Deallocate: %w", round, err)
			}
		}
		return switchDetail(mode, pids)
	})
	if err != nil {
		return "", err
	}
	text := fmt.Sprintf("%d× (Conn.Prepare(\"pgt_again\"), %d queries by name, Conn.Deallocate)", prepareAgainRounds, prepareAgainRuns)
	if detail != "" {
		text += "; " + detail
	}
	return text, nil
}

func checkSavepoint(mode string) (string, error) {
	t := "tx_" + mode
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	if _, err := c.Exec(bg, "DELETE FROM "+t+" WHERE id < 1000"); err != nil {
		return "", err
	}
	tx, err := c.Begin(bg)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(bg)
	if _, err := tx.Exec(bg, "INSERT INTO "+t+" VALUES ($1, 'kept')", 1); err != nil {
		return "", err
	}
	sp, err := tx.Begin(bg) // SAVEPOINT sp_1
	if err != nil {
		return "", err
	}
	if _, err := sp.Exec(bg, "INSERT INTO "+t+" VALUES ($1, 'rolled back')", 2); err != nil {
		return "", err
	}
	_, err = sp.Exec(bg, "SELECT 1/0")
	if err := expectEq(sqlstate(err), "22012", "error of SELECT 1/0"); err != nil {
		return "", err
	}
	if err := sp.Rollback(bg); err != nil { // ROLLBACK TO SAVEPOINT sp_1
		return "", err
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+t+" VALUES ($1, 'after the savepoint')", 3); err != nil {
		return "", err
	}
	if err := tx.Commit(bg); err != nil {
		return "", err
	}
	rows, err := c.Query(bg, "SELECT id FROM "+t+" WHERE id < 1000 ORDER BY id")
	if err != nil {
		return "", err
	}
	ids := []int32{}
	for rows.Next() {
		var id int32
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	return "Tx.Begin inside a transaction: SAVEPOINT, ROLLBACK TO SAVEPOINT", expectEq(ids, []int32{1, 3}, "rows after the transaction")
}

func checkErrorRollback(mode string) (string, error) {
	t := "tx_" + mode
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	tx, err := c.Begin(bg)
	if err != nil {
		return "", err
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+t+" VALUES ($1, 'never committed')", 10); err != nil {
		return "", err
	}
	_, err = tx.Exec(bg, "SELECT * FROM no_such_table")
	if err := expectEq(sqlstate(err), "42P01", "error for a missing table"); err != nil {
		return "", err
	}
	_, err = tx.Exec(bg, "SELECT 1")
	if err := expectEq(sqlstate(err), "25P02", "error in the aborted transaction"); err != nil {
		return "", err
	}
	if err := tx.Rollback(bg); err != nil {
		return "", err
	}
	for i := 0; i < 5; i++ {
		if err := expectItems(c, acmeItems, "items after ROLLBACK"); err != nil {
			return "", err
		}
	}
	var n int64
	if err := c.QueryRow(bg, "SELECT count(*) FROM "+t+" WHERE id = $1", 10).Scan(&n); err != nil {
		return "", err
	}
	return "", expectEq(n, int64(0), "rows of the rolled back transaction")
}

func copyCheck(c *pgx.Conn, table string) ([]interface{}, error) {
	var n int64
	var sum string
	err := c.QueryRow(bg, copyCheckSQL(table)).Scan(&n, &sum)
	return []interface{}{n, sum}, err
}

func checkCopyIn(mode string) (string, error) {
	t := "copy_" + mode
	data := copyData()
	want := []interface{}{int64(copyRows), md5hex(data)}
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	if _, err := c.Exec(bg, "TRUNCATE "+t); err != nil {
		return "", err
	}
	tag, err := c.PgConn().CopyFrom(bg, bytes.NewReader(data), "COPY "+t+" (id, name) FROM STDIN")
	if err != nil {
		return "", err
	}
	if err := expectEq(tag.RowsAffected(), int64(copyRows), "COPY row count"); err != nil {
		return "", err
	}
	got, err := copyCheck(c, t)
	if err != nil {
		return "", err
	}
	if err := expectEq(got, want, "count and checksum through the proxy"); err != nil {
		return "", err
	}
	d, err := direct()
	if err != nil {
		return "", err
	}
	defer d.Close(bg)
	got, err = copyCheck(d, "tenant_acme."+t)
	if err != nil {
		return "", err
	}
	return "PgConn().CopyFrom (text COPY)", expectEq(got, want, "count and checksum on the server")
}

func checkCopyOut(mode string) (string, error) {
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	var out bytes.Buffer
	if _, err := c.PgConn().CopyTo(bg, &out, copyOutSQL); err != nil {
		return "", err
	}
	if err := expectEq(md5hex(out.Bytes()), md5hex(copyData()), "checksum of COPY TO STDOUT"); err != nil {
		return "", err
	}
	return "PgConn().CopyTo", expectItems(c, acmeItems, "items after COPY")
}

func waitNotification(c *pgx.Conn) (string, error) {
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	n, err := c.WaitForNotification(ctx)
	if err != nil {
		return "", fmt.Errorf("no notification within 5 s: %w", err)
	}
	return n.Payload, nil
}

func checkListenNotify(mode string) (string, error) {
	channel := "jobs_" + mode
	listener, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer listener.Close(bg)
	notifier, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer notifier.Close(bg)
	if _, err := listener.Exec(bg, "LISTEN "+channel); err != nil {
		return "", err
	}
	_, err = withNoise(mode, 3, func() (string, error) {
		if _, err := notifier.Exec(bg, "NOTIFY "+channel+", 'hello from "+mode+"'"); err != nil {
			return "", err
		}
		got, err := waitNotification(listener)
		if err != nil {
			return "", err
		}
		if err := expectEq(got, "hello from "+mode, "notification"); err != nil {
			return "", err
		}
		pids := map[int32]bool{}
		for i := 0; i < 20; i++ {
			var pid int32
			if err := listener.QueryRow(bg, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				return "", err
			}
			pids[pid] = true
		}
		return "", expectEq(len(pids), 1, "server connections the listener used after LISTEN")
	})
	if err != nil {
		return "", err
	}
	if _, err := notifier.Exec(bg, "SELECT pg_notify($1, 'again')", channel); err != nil {
		return "", err
	}
	got, err := waitNotification(listener)
	if err != nil {
		return "", err
	}
	if err := expectEq(got, "again", "second notification"); err != nil {
		return "", err
	}
	if mode == "transaction" {
		return "Conn.WaitForNotification; LISTEN pins the client to its server connection", nil
	}
	return "Conn.WaitForNotification", nil
}

// pgx v4 closes a connection whose query's context is cancelled; its API to cancel
// a query and keep the connection is PgConn.CancelRequest.
func checkCancel(mode string) (string, error) {
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	return withNoise(mode, 2, func() (string, error) {
		started := time.Now()
		timer := time.AfterFunc(cancelAfter, func() { c.PgConn().CancelRequest(bg) })
		defer timer.Stop()
		_, err := c.Exec(bg, "SELECT pg_sleep(10)")
		elapsed := time.Since(started)
		if err := expectEq(sqlstate(err), "57014", "error of the cancelled query"); err != nil {
			return "", err
		}
		if elapsed > cancelLimit {
			return "", failf("cancel took %s", elapsed)
		}
		return "57014 via PgConn().CancelRequest", expectItems(c, acmeItems, "items after the cancel")
	})
}

func checkBytea(mode string) (string, error) {
	data := make([]byte, 1<<20)
	rand.Read(data)
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	var digest string
	var length int32
	var back []byte
	if err := c.QueryRow(bg, "SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s", data).Scan(&digest, &length, &back); err != nil {
		return "", err
	}
	if err := expectEq([]interface{}{digest, length}, []interface{}{md5hex(data), len(data)}, "md5 and length on the server"); err != nil {
		return "", err
	}
	if !bytes.Equal(back, data) {
		return "", failf("the bytea came back different")
	}
	return "", nil
}

func checkRows(mode string) (string, error) {
	c, err := connect(mode, "")
	if err != nil {
		return "", err
	}
	defer c.Close(bg)
	rows, err := c.Query(bg, "SELECT g, 'row ' || g FROM generate_series(1, $1::int) g", resultRows)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var n, sum int64
	var last string
	for rows.Next() {
		var g int32
		if err := rows.Scan(&g, &last); err != nil {
			return "", err
		}
		n++
		sum += int64(g)
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	return "", expectEq([]interface{}{n, sum, last}, []interface{}{resultRows, resultSum, "row " + strconv.Itoa(resultRows)}, "rows, sum, last row")
}

func checkConcurrency(mode string) (string, error) {
	d, err := direct()
	if err != nil {
		return "", err
	}
	defer d.Close(bg)
	if _, err := d.Exec(bg, "UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1", mode); err != nil {
		return "", err
	}
	if _, err := d.Exec(bg, "DELETE FROM tenant_acme.events WHERE mode = $1", mode); err != nil {
		return "", err
	}
	pool, err := pgxpool.Connect(bg, dsn(mode, "")+fmt.Sprintf("&pool_max_conns=%d", concurrentClients))
	if err != nil {
		return "", err
	}
	defer pool.Close()
	var wg sync.WaitGroup
	failures := make(chan string, concurrentClients)
	for k := 0; k < concurrentClients; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			for seq := 0; seq < transactionsPerConn; seq++ {
				err := pool.BeginFunc(bg, func(tx pgx.Tx) error {
					if _, err := tx.Exec(bg, "UPDATE counters SET n = n + 1 WHERE mode = $1", mode); err != nil {
						return err
					}
					_, err := tx.Exec(bg, "INSERT INTO events VALUES ($1, $2, $3)", mode, k, seq)
					return err
				})
				if err != nil {
					failures <- fmt.Sprintf("client %d: %s", k, describe(err))
					return
				}
			}
		}(k)
	}
	wg.Wait()
	close(failures)
	var errs []string
	for f := range failures {
		errs = append(errs, f)
	}
	if len(errs) > 0 {
		if len(errs) > 3 {
			errs = errs[:3]
		}
		return "", failf("%s", strings.Join(errs, "; "))
	}
	total := int64(concurrentClients * transactionsPerConn)
	var n, events int64
	if err := d.QueryRow(bg, "SELECT n FROM tenant_acme.counters WHERE mode = $1", mode).Scan(&n); err != nil {
		return "", err
	}
	if err := d.QueryRow(bg, "SELECT count(*) FROM tenant_acme.events WHERE mode = $1", mode).Scan(&events); err != nil {
		return "", err
	}
	return "pgxpool (pool_max_conns=50), 50 goroutines, Pool.BeginFunc per transaction",
		expectEq([]int64{n, events}, []int64{total, total}, fmt.Sprintf("counter and events after %d transactions", total))
}

type check struct {
	feature string
	fn      func(string) (string, error)
}

var checks = []check{
	{"connect", checkConnect},
	{"isolation", checkIsolation},
	{"prepared", checkPrepared},
	{"prepare_again", checkPrepareAgain},
	{"savepoint", checkSavepoint},
	{"error_rollback", checkErrorRollback},
	{"copy_in", checkCopyIn},
	{"copy_out", checkCopyOut},
	{"listen_notify", checkListenNotify},
	{"cancel", checkCancel},
	{"bytea_1mb", checkBytea},
	{"rows_1e5", checkRows},
	{"concurrency", checkConcurrency},
}
