// The runner of pgx_checks.go: constants, helpers and the records, as
// tests/drivers/pgt_common.py has them for the scripts. Built together with
// pgx_checks.go by tests/drivers/setup.sh.
package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
)

const (
	driver                    = "pgx"
	preparedRuns              = 1000
	copyRows                  = 10000
	resultRows                = 100000
	concurrentClients         = 50
	transactionsPerConn       = 20
	cancelAfter               = 300 * time.Millisecond
	cancelLimit               = 5 * time.Second
	checkTimeout              = 60 * time.Second
	prepareAgainRounds        = 20
	prepareAgainRuns          = 10
	preparedSQL               = "SELECT $1::int + 1 AS n, (SELECT count(*) FROM items) AS items, pg_backend_pid() AS pid"
	copyOutSQL                = "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, 10000) g ORDER BY g) TO STDOUT"
	resultSum           int64 = resultRows * (resultRows + 1) / 2
)

var (
	modes       = []string{"session", "transaction"}
	acmeItems   = []string{"acme anvil", "acme rocket skates"}
	globexItems = []string{"globex hammock", "globex doomsday device", "globex coupon"}
	env         = map[string]string{}
	bg          = context.Background()
	printLock   sync.Mutex
	// Set by setup.sh at build time (-ldflags -X) from the Debian package.
	pgxVersion = "?"
)

func copyCheckSQL(table string) string {
	return "SELECT count(*), md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) FROM " + table
}

func copyData() []byte {
	var b bytes.Buffer
	for i := 1; i <= copyRows; i++ {
		fmt.Fprintf(&b, "%d\trow-%d-é\n", i, i)
	}
	return b.Bytes()
}

func md5hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

// checkFailed is a wrong answer, as opposed to a driver error.
type checkFailed struct{ msg string }

func (e checkFailed) Error() string { return e.msg }

func failf(format string, args ...interface{}) error {
	return checkFailed{fmt.Sprintf(format, args...)}
}

func expectEq(got, want interface{}, what string) error {
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		return failf("%s: got %s, expected %s", what, g, w)
	}
	return nil
}

func describe(err error) string {
	var failed checkFailed
	if errors.As(err, &failed) {
		return failed.msg
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Sprintf("PgError %s: %s", pgErr.Code, err.Error())
	}
	return fmt.Sprintf("%T: %s", err, err.Error())
}

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func emit(record map[string]interface{}) {
	printLock.Lock()
	defer printLock.Unlock()
	b, _ := json.Marshal(record)
	os.Stdout.Write(append(b, '\n'))
}

func dsn(mode, tenant string) string {
	port := env["PGT_SESSION_PORT"]
	if mode == "transaction" {
		port = env["PGT_TXN_PORT"]
	}
	if tenant == "" {
		tenant = env["PGT_TENANT"]
	}
	return fmt.Sprintf("postgres://%s@%s:%s/%s?connect_timeout=10", env["PGT_USER"], env["PGT_HOST"], port, tenant)
}

func connect(mode, tenant string) (*pgx.Conn, error) {
	return pgx.Connect(bg, dsn(mode, tenant))
}

func direct() (*pgx.Conn, error) {
	return pgx.Connect(bg, fmt.Sprintf("postgres://postgres@%s:%s/erp", env["PGT_HOST"], env["PGT_DIRECT_PORT"]))
}

func items(c *pgx.Conn) ([]string, error) {
	rows, err := c.Query(bg, "SELECT name FROM items ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func expectItems(c *pgx.Conn, want []string, what string) error {
	got, err := items(c)
	if err != nil {
		return err
	}
	return expectEq(got, want, what)
}

// withNoise keeps count other connections (3 acme, 1 globex) running the same
// statement until body returns, so that a transaction-mode client meets other servers.
func withNoise(mode string, count int, body func() (string, error)) (string, error) {
	var stop sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, count)
	for i := 0; i < count; i++ {
		stop.Add(1)
		go func(i int) {
			defer stop.Done()
			tenant := ""
			if i%4 == 3 {
				tenant = env["PGT_OTHER_TENANT"]
			}
			c, err := connect(mode, tenant)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(bg)
			for {
				select {
				case <-done:
					return
				default:
				}
				var n, count int64
				var pid int32
				if err := c.QueryRow(bg, preparedSQL, 7).Scan(&n, &count, &pid); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	time.Sleep(50 * time.Millisecond)
	detail, err := body()
	close(done)
	stop.Wait()
	close(errs)
	if err != nil {
		return "", err
	}
	var failures []string
	for e := range errs {
		failures = append(failures, describe(e))
	}
	if len(failures) > 0 {
		return "", failf("background connections failed: %s", strings.Join(failures, "; "))
	}
	return detail, nil
}

func switchDetail(mode string, pids []int32) (string, error) {
	seen := map[int32]bool{}
	for _, p := range pids {
		seen[p] = true
	}
	if mode == "transaction" {
		if len(seen) < 2 {
			return "", failf("all %d executions ran on one server: the check proves nothing", len(pids))
		}
		return "executions switched server connections", nil
	}
	return "", expectEq(len(seen), 1, "server connections used by one session-mode client")
}

// runCheck runs one check with at most checkTimeout; a hung check is left behind.
func runCheck(mode string, c check) {
	fmt.Fprintf(os.Stderr, "[%s %s] %s ...\n", driver, mode, c.feature)
	started := time.Now()
	type outcome struct {
		detail string
		err    error
	}
	done := make(chan outcome, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- outcome{err: fmt.Errorf("panic: %v", p)}
			}
		}()
		detail, err := c.fn(mode)
		done <- outcome{detail, err}
	}()
	record := map[string]interface{}{"driver": driver, "mode": mode, "feature": c.feature}
	select {
	case o := <-done:
		if o.err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", o.err)
			record["status"] = "fail"
			record["error"] = describe(o.err)
		} else {
			record["status"] = "pass"
			record["detail"] = o.detail
		}
	case <-time.After(checkTimeout):
		record["status"] = "fail"
		record["error"] = fmt.Sprintf("no answer within %d s (hung)", int(checkTimeout.Seconds()))
	}
	record["ms"] = time.Since(started).Milliseconds()
	emit(record)
}

func main() {
	for _, k := range []string{"PGT_HOST", "PGT_SESSION_PORT", "PGT_TXN_PORT", "PGT_DIRECT_PORT"} {
		if os.Getenv(k) == "" {
			fmt.Fprintf(os.Stderr, "missing environment variable %s (run through cargo test --test drivers)\n", k)
			os.Exit(2)
		}
		env[k] = os.Getenv(k)
	}
	for k, v := range map[string]string{"PGT_USER": "app", "PGT_TENANT": "acme", "PGT_OTHER_TENANT": "globex"} {
		env[k] = v
		if s := os.Getenv(k); s != "" {
			env[k] = s
		}
	}
	emit(map[string]interface{}{"driver": driver, "info": map[string]string{
		"name":    "pgx (Go)",
		"version": pgxVersion + " (" + runtime.Version() + ")",
		"notes":   "defaults: statement cache in prepare mode (512 named statements per connection); pgxpool for the concurrency check",
	}})
	for _, mode := range modes {
		for _, c := range checks {
			runCheck(mode, c)
		}
	}
	os.Exit(0)
}
