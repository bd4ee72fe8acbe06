#!/usr/bin/perl
# DBI with DBD::Pg through pgtenant, with the driver's defaults: server-side prepares
# (pg_server_prepare=1), so a statement handle with placeholders is a named statement
# (dbdpg_p<pid>_<n>) prepared at its first execute and dropped with DEALLOCATE (sent
# as SQL) when the handle goes away; AutoCommit on. RaiseError is set, as most
# programs do. Each check runs in a forked process (killed after CHECK_TIMEOUT);
# concurrent clients are forked processes. Same checks and records as pgt_common.py.
use strict;
use warnings;
use utf8;

use DBI;
use DBD::Pg qw(:pg_types :async);
use Digest::MD5 qw(md5_hex);
use Encode qw(encode_utf8);
use File::Temp qw(tempdir);
use JSON::PP;
use POSIX qw(_exit WNOHANG);
use Time::HiRes qw(time sleep);

my $DRIVER = 'dbd-pg';
my @MODES = qw(session transaction);
my @ACME_ITEMS = ('acme anvil', 'acme rocket skates');
my @GLOBEX_ITEMS = ('globex hammock', 'globex doomsday device', 'globex coupon');
my $PREPARED_RUNS = 1000;
my $COPY_ROWS = 10_000;
my $RESULT_ROWS = 100_000;
my $RESULT_SUM = $RESULT_ROWS * ($RESULT_ROWS + 1) / 2;
my $CONCURRENT_CLIENTS = 50;
my $TRANSACTIONS_PER_CLIENT = 20;
my $CANCEL_AFTER = 0.3;
my $CANCEL_LIMIT = 5.0;
my $CHECK_TIMEOUT = 60;
my $PREPARE_AGAIN_ROUNDS = 20;
my $PREPARE_AGAIN_RUNS = 10;
my $SQL = 'SELECT $1::int + 1 AS n, (SELECT count(*) FROM items) AS items, pg_backend_pid() AS pid';
my $COPY_OUT_SQL = "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, $COPY_ROWS) g ORDER BY g) TO STDOUT";

for my $k (qw(PGT_HOST PGT_SESSION_PORT PGT_TXN_PORT PGT_DIRECT_PORT)) {
    die "missing environment variable $k (run through cargo test --test drivers)\n" unless defined $ENV{$k};
}
my %PORT = (session => $ENV{PGT_SESSION_PORT}, transaction => $ENV{PGT_TXN_PORT});
my $HOST = $ENV{PGT_HOST};
my $USER = $ENV{PGT_USER} // 'app';
my $TENANT = $ENV{PGT_TENANT} // 'acme';
my $OTHER = $ENV{PGT_OTHER_TENANT} // 'globex';
my $JSON = JSON::PP->new->canonical->utf8;

# A check's failure that is not a driver error.
package CheckFailed { sub new { my ($c, $m) = @_; bless { message => $m }, $c } }
# A driver error with the SQLSTATE it had when raised (a statement handle's DESTROY
# may change $DBI::state before the error is looked at).
package DbError { sub new { my ($c, $m, $s) = @_; bless { message => $m, state => $s }, $c } }

sub fail_check { die CheckFailed->new($_[0]) }
sub expect { fail_check($_[1]) unless $_[0] }

sub expect_eq {
    my ($got, $want, $what) = @_;
    my ($g, $w) = map { JSON::PP->new->canonical->encode([$_]) } $got, $want;
    fail_check("$what: got $g, expected $w") unless $g eq $w;
}

sub describe_error {
    my ($e) = @_;
    return $e->{message} if ref $e eq 'CheckFailed';
    my $text = ref $e eq 'DbError' ? $e->{message} : "$e";
    $text =~ s/\s+at \S+ line \d+\.?\s*$//;
    ($text) = split /\n/, $text;
    my $state = ref $e eq 'DbError' ? $e->{state} : $DBI::state;
    return $state && $state ne 'S1000' ? "DBI $state: $text" : "error: $text";
}

sub emit {
    my ($record) = @_;
    local $| = 1;
    print STDOUT $JSON->encode($record), "\n";
}

my $raise = sub { die DbError->new($_[0], $_[1]->state) };

sub connect_to {
    my ($mode, $tenant) = @_;
    my $db = $tenant // $TENANT;
    return DBI->connect("dbi:Pg:host=$HOST;port=$PORT{$mode};dbname=$db;connect_timeout=10",
        $USER, '', { RaiseError => 1, PrintError => 0, AutoCommit => 1, pg_enable_utf8 => 1,
            HandleError => $raise });
}

sub direct {
    return DBI->connect("dbi:Pg:host=$HOST;port=$ENV{PGT_DIRECT_PORT};dbname=erp", 'postgres', '',
        { RaiseError => 1, PrintError => 0, AutoCommit => 1, pg_enable_utf8 => 1 });
}

sub items { return $_[0]->selectcol_arrayref('SELECT name FROM items ORDER BY id') }

# The SQLSTATE of running $sql (selectall_arrayref), or undef if it succeeded.
sub query_error {
    my ($dbh, $sql) = @_;
    return undef if eval { $dbh->selectall_arrayref($sql); 1 };
    return ref $@ eq 'DbError' ? $@->{state} : $dbh->state;
}

# Forks $count processes; process $i runs $body->($i). A forked process ends with
# _exit, so that it does not run the destructors of the handles it inherited (they
# would end the parent's sessions).
sub fork_all {
    my ($count, $body) = @_;
    my $dir = tempdir(CLEANUP => 0);
    my %pids;
    for my $i (0 .. $count - 1) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            if (eval { $body->($i); 1 }) {
                open my $f, '>', "$dir/$i.ok";
            } else {
                open my $f, '>', "$dir/$i";
                print $f describe_error($@);
            }
            _exit(0);
        }
        $pids{$i} = $pid;
    }
    return [$dir, \%pids];
}

# Waits for forked processes (at most $timeout s in all); returns their errors.
sub wait_all {
    my ($forked, $timeout) = @_;
    my ($dir, $pids) = @$forked;
    my $deadline = time + ($timeout // 120);
    my @errors;
    for my $i (sort { $a <=> $b } keys %$pids) {
        my $done = 0;
        while (waitpid($pids->{$i}, WNOHANG) == 0) {
            if (time > $deadline) {
                kill 'KILL', $pids->{$i};
                waitpid($pids->{$i}, 0);
                push @errors, "process $i: did not finish";
                $done = 1;
                last;
            }
            sleep 0.01;
        }
        next if $done;
        if (-f "$dir/$i") {
            open my $f, '<', "$dir/$i";
            local $/;
            push @errors, "process $i: " . <$f>;
        } elsif (!-f "$dir/$i.ok") {
            push @errors, "process $i: died";
        }
    }
    system('rm', '-rf', $dir);
    return @errors;
}

# Other clients running the same statement until $body returns (3 acme, 1 globex).
sub with_noise {
    my ($mode, $count, $body) = @_;
    my $stop = tempdir(CLEANUP => 0) . '/stop';
    my $forked = fork_all($count, sub {
        my ($i) = @_;
        my $dbh = connect_to($mode, $i % 4 == 3 ? $OTHER : undef);
        my $sth = $dbh->prepare($SQL);
        until (-e $stop) {
            $sth->execute(7);
            $sth->fetchall_arrayref;
        }
    });
    sleep 0.05;
    my $result = eval { $body->() };
    my $error = $@;
    open my $f, '>', $stop;
    close $f;
    my @errors = wait_all($forked, 20);
    die $error if $error;
    expect(!@errors, 'background connections failed: ' . join('; ', @errors));
    return $result;
}

sub switch_detail {
    my ($mode, $pids) = @_;
    my %seen = map { $_ => 1 } @$pids;
    my $n = keys %seen;
    if ($mode eq 'transaction') {
        expect($n > 1, 'all ' . scalar(@$pids) . ' executions ran on one server: the check proves nothing');
        return 'executions switched server connections';
    }
    expect_eq($n, 1, 'server connections used by one session-mode client');
    return '';
}

sub check_connect {
    my ($mode) = @_;
    my $dbh = connect_to($mode);
    my ($db, $path) = $dbh->selectrow_array("SELECT current_database(), current_setting('search_path')");
    expect_eq($db, 'erp', 'current_database()');
    expect($path =~ /tenant_acme/, "search_path is $path");
    return '';
}

sub check_isolation {
    my ($mode) = @_;
    my $a = connect_to($mode);
    my $g = connect_to($mode, $OTHER);
    # Placeholders make DBD::Pg prepare on the server.
    my $ca = $a->prepare('SELECT count(*) FROM items WHERE id > $1');
    my $cg = $g->prepare('SELECT count(*) FROM items WHERE id > $1');
    for (1 .. 20) {
        expect_eq(items($a), \@ACME_ITEMS, 'acme items');
        expect_eq(items($g), \@GLOBEX_ITEMS, 'globex items');
        $ca->execute(0);
        $cg->execute(0);
        expect_eq([$ca->fetchrow_array, $cg->fetchrow_array], [2, 3], 'prepared counts (acme, globex)');
    }
    return '';
}

sub check_prepared {
    my ($mode) = @_;
    return with_noise($mode, 4, sub {
        my $dbh = connect_to($mode);
        my $sth = $dbh->prepare($SQL);
        my @pids;
        for my $i (0 .. $PREPARED_RUNS - 1) {
            $sth->execute($i);
            my ($n, $count, $pid) = $sth->fetchrow_array;
            expect_eq([$n, $count], [$i + 1, scalar @ACME_ITEMS], "execution $i");
            push @pids, $pid;
        }
        undef $sth;    # DEALLOCATE dbdpg_p<pid>_<n>
        expect_eq(items($dbh), \@ACME_ITEMS, 'items after the statement handle went away');
        return switch_detail($mode, \@pids);
    });
}

sub check_prepare_again {
    my ($mode) = @_;
    return with_noise($mode, 4, sub {
        my $dbh = connect_to($mode);
        my @pids;
        for my $round (0 .. $PREPARE_AGAIN_ROUNDS - 1) {
            my $sth = $dbh->prepare($SQL);
            for my $i (0 .. $PREPARE_AGAIN_RUNS - 1) {
                $sth->execute($i);
                my ($n, $count, $pid) = $sth->fetchrow_array;
                expect_eq([$n, $count], [$i + 1, scalar @ACME_ITEMS], "round $round, execution $i");
                push @pids, $pid;
            }
            undef $sth;    # DEALLOCATE dbdpg_p<pid>_<n>
        }
        my $detail = switch_detail($mode, \@pids);
        return "$PREPARE_AGAIN_ROUNDS× (prepare, $PREPARE_AGAIN_RUNS executes, the handle dropped: "
            . 'DEALLOCATE dbdpg_p<pid>_<n>)' . ($detail ? "; $detail" : '');
    });
}

sub check_savepoint {
    my ($mode) = @_;
    my $t = "tx_$mode";
    my $dbh = connect_to($mode);
    $dbh->do("DELETE FROM $t WHERE id < 1000");
    $dbh->begin_work;
    $dbh->do("INSERT INTO $t VALUES (?, 'kept')", undef, 1);
    $dbh->pg_savepoint('sp');
    $dbh->do("INSERT INTO $t VALUES (?, 'rolled back')", undef, 2);
    expect_eq(query_error($dbh, 'SELECT 1/0'), '22012', 'error of SELECT 1/0');
    $dbh->pg_rollback_to('sp');
    $dbh->do("INSERT INTO $t VALUES (?, 'after the savepoint')", undef, 3);
    $dbh->commit;
    expect_eq($dbh->selectcol_arrayref("SELECT id FROM $t WHERE id < 1000 ORDER BY id"), [1, 3],
        'rows after the transaction');
    return 'begin_work, pg_savepoint, pg_rollback_to, commit';
}

sub check_error_rollback {
    my ($mode) = @_;
    my $t = "tx_$mode";
    my $dbh = connect_to($mode);
    $dbh->begin_work;
    $dbh->do("INSERT INTO $t VALUES (?, 'never committed')", undef, 10);
    expect_eq(query_error($dbh, 'SELECT * FROM no_such_table'), '42P01', 'error for a missing table');
    expect_eq(query_error($dbh, 'SELECT 1'), '25P02', 'error in the aborted transaction');
    $dbh->rollback;
    expect_eq(items($dbh), \@ACME_ITEMS, 'items after ROLLBACK') for 1 .. 5;
    expect_eq(scalar $dbh->selectrow_array("SELECT count(*) FROM $t WHERE id = ?", undef, 10), 0,
        'rows of the rolled back transaction');
    return '';
}

sub copy_data { join '', map { "$_\trow-$_-é\n" } 1 .. $COPY_ROWS }

sub copy_check_sql {
    "SELECT count(*), md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) FROM $_[0]";
}

sub check_copy_in {
    my ($mode) = @_;
    my $t = "copy_$mode";
    my $data = copy_data();
    my $want = [$COPY_ROWS, md5_hex(encode_utf8($data))];
    my $dbh = connect_to($mode);
    $dbh->do("TRUNCATE $t");
    $dbh->do("COPY $t (id, name) FROM STDIN");
    for (my $at = 0; $at < length $data; $at += 16384) {
        $dbh->pg_putcopydata(substr($data, $at, 16384));
    }
    $dbh->pg_putcopyend;
    expect_eq([$dbh->selectrow_array(copy_check_sql($t))], $want, 'count and checksum through the proxy');
    my $d = direct();
    expect_eq([$d->selectrow_array(copy_check_sql("tenant_acme.$t"))], $want, 'count and checksum on the server');
    return 'pg_putcopydata, pg_putcopyend';
}

sub check_copy_out {
    my ($mode) = @_;
    my $dbh = connect_to($mode);
    $dbh->do($COPY_OUT_SQL);
    my ($out, $line) = ('', '');
    $out .= $line while $dbh->pg_getcopydata($line) >= 0;
    expect_eq(md5_hex(encode_utf8($out)), md5_hex(encode_utf8(copy_data())), 'checksum of COPY TO STDOUT');
    expect_eq(items($dbh), \@ACME_ITEMS, 'items after COPY');
    return 'pg_getcopydata';
}

sub wait_notification {
    my ($dbh) = @_;
    my $deadline = time + 5;
    while (1) {
        my $n = $dbh->pg_notifies;
        return $n->[2] if $n;
        expect(time < $deadline, 'no notification within 5 s');
        my $rin = '';
        vec($rin, $dbh->{pg_socket}, 1) = 1;
        select($rin, undef, undef, 0.1);
    }
}

sub check_listen_notify {
    my ($mode) = @_;
    my $channel = "jobs_$mode";
    my $listener = connect_to($mode);
    my $notifier = connect_to($mode);
    $listener->do("LISTEN $channel");
    with_noise($mode, 3, sub {
        $notifier->do("NOTIFY $channel, 'hello from $mode'");
        expect_eq(wait_notification($listener), "hello from $mode", 'notification');
        my %pids = map { scalar($listener->selectrow_array('SELECT pg_backend_pid()')) => 1 } 1 .. 20;
        expect_eq(scalar(keys %pids), 1, 'server connections the listener used after LISTEN');
    });
    $notifier->do("SELECT pg_notify(?, 'again')", undef, $channel);
    expect_eq(wait_notification($listener), 'again', 'second notification');
    my $detail = 'pg_notifies, select() on pg_socket';
    return $mode eq 'transaction' ? "$detail; LISTEN pins the client to its server connection" : $detail;
}

sub check_cancel {
    my ($mode) = @_;
    return with_noise($mode, 2, sub {
        my $dbh = connect_to($mode);
        my $started = time;
        $dbh->do('SELECT pg_sleep(10)', { pg_async => PG_ASYNC });
        sleep $CANCEL_AFTER;
        expect($dbh->pg_cancel, 'pg_cancel returned false');
        my $state = $dbh->state;
        my $elapsed = time - $started;
        expect($elapsed < $CANCEL_LIMIT, sprintf('cancel took %.1fs', $elapsed));
        expect_eq($state, '57014', 'SQLSTATE after pg_cancel');
        expect_eq(items($dbh), \@ACME_ITEMS, 'items after the cancel');
        return '57014 via pg_cancel on a PG_ASYNC query';
    });
}

sub check_bytea {
    my ($mode) = @_;
    my $data = join '', map { chr int rand 256 } 1 .. (1 << 20);
    my $dbh = connect_to($mode);
    my $sth = $dbh->prepare('SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s');
    $sth->bind_param(1, $data, { pg_type => PG_BYTEA });
    $sth->execute;
    my ($digest, $length, $back) = $sth->fetchrow_array;
    expect_eq([$digest, $length], [md5_hex($data), length $data], 'md5 and length on the server');
    expect($back eq $data, 'the bytea came back different');
    return 'bind_param(..., { pg_type => PG_BYTEA })';
}

sub check_rows {
    my ($mode) = @_;
    my $dbh = connect_to($mode);
    my $rows = $dbh->selectall_arrayref("SELECT g, 'row ' || g FROM generate_series(1, ?::int) g", undef, $RESULT_ROWS);
    expect_eq(scalar @$rows, $RESULT_ROWS, 'rows');
    my $sum = 0;
    $sum += $_->[0] for @$rows;
    expect_eq($sum, $RESULT_SUM, 'sum');
    expect_eq($rows->[-1][1], "row $RESULT_ROWS", 'last row');
    return '';
}

sub check_concurrency {
    my ($mode) = @_;
    my $d = direct();
    $d->do('UPDATE tenant_acme.counters SET n = 0 WHERE mode = ?', undef, $mode);
    $d->do('DELETE FROM tenant_acme.events WHERE mode = ?', undef, $mode);
    $d->disconnect;
    my @errors = wait_all(fork_all($CONCURRENT_CLIENTS, sub {
        my ($k) = @_;
        my $dbh = connect_to($mode);
        my $update = $dbh->prepare('UPDATE counters SET n = n + 1 WHERE mode = ?');
        my $insert = $dbh->prepare('INSERT INTO events VALUES (?, ?, ?)');
        for my $seq (0 .. $TRANSACTIONS_PER_CLIENT - 1) {
            $dbh->begin_work;
            $update->execute($mode);
            $insert->execute($mode, $k, $seq);
            $dbh->commit;
        }
    }), 120);
    expect(!@errors, join('; ', @errors[0 .. ($#errors < 2 ? $#errors : 2)]));
    my $total = $CONCURRENT_CLIENTS * $TRANSACTIONS_PER_CLIENT;
    $d = direct();
    my ($n) = $d->selectrow_array('SELECT n FROM tenant_acme.counters WHERE mode = ?', undef, $mode);
    my ($events) = $d->selectrow_array('SELECT count(*) FROM tenant_acme.events WHERE mode = ?', undef, $mode);
    expect_eq([$n, $events], [$total, $total], "counter and events after $total transactions");
    return '50 processes, a connection each';
}

my @CHECKS = (
    connect => \&check_connect,
    isolation => \&check_isolation,
    prepared => \&check_prepared,
    prepare_again => \&check_prepare_again,
    savepoint => \&check_savepoint,
    error_rollback => \&check_error_rollback,
    copy_in => \&check_copy_in,
    copy_out => \&check_copy_out,
    listen_notify => \&check_listen_notify,
    cancel => \&check_cancel,
    bytea_1mb => \&check_bytea,
    rows_1e5 => \&check_rows,
    concurrency => \&check_concurrency,
);

# Runs one check in a forked process, at most CHECK_TIMEOUT seconds.
sub run_check {
    my ($mode, $feature, $fn) = @_;
    print STDERR "[$DRIVER $mode] $feature ...\n";
    my $started = time;
    my %record = (driver => $DRIVER, mode => $mode, feature => $feature);
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $detail = eval { $fn->($mode) };
        if (my $e = $@) {
            print STDERR ref $e ? $e->{message} : "$e", "\n";
            %record = (%record, status => 'fail', error => describe_error($e));
        } else {
            %record = (%record, status => 'pass', detail => $detail // '');
        }
        $record{ms} = int((time - $started) * 1000);
        emit(\%record);
        _exit(0);
    }
    while (waitpid($pid, WNOHANG) == 0) {
        if (time - $started > $CHECK_TIMEOUT) {
            kill 'KILL', $pid;
            waitpid($pid, 0);
            emit({ %record, status => 'fail', error => "no answer within $CHECK_TIMEOUT s (hung)",
                ms => int((time - $started) * 1000) });
            return;
        }
        sleep 0.02;
    }
    emit({ %record, status => 'fail', error => "the check process died (status $?)", ms => 0 }) if $? != 0;
}

emit({ driver => $DRIVER, info => { name => 'Perl DBI + DBD::Pg',
    version => "$DBD::Pg::VERSION (DBI $DBI::VERSION, Perl $^V)",
    notes => 'defaults: server-side prepares (pg_server_prepare=1; DEALLOCATE as SQL when a handle goes away); RaiseError on' } });
for my $mode (@MODES) {
    for (my $i = 0; $i < @CHECKS; $i += 2) {
        run_check($mode, $CHECKS[$i], $CHECKS[$i + 1]);
    }
}
_exit(0);
