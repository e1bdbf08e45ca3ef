// Command gokit-cluster measures what go-kit v0.13.0's own sd clients do when a registry
// cluster loses its leader (sdkit issue 20). For one backend it repeats, -reps times:
//
//  1. go-kit clients built with EVERY member's address; an Instancer on a fresh service, an
//     Endpointer (sd.NewEndpointer, trivial factory) read every 2 ms, a Registrar for A;
//     wait until the Endpointer serves {A}.
//  2. kill the leader (`scripts/registries leader/kill`; eureka: peer 1), then at once
//     register B with a new Registrar every 100 ms until go-kit's Register succeeds
//     (registrar_ms), and wait until the Endpointer serves exactly {A,B} (instancer_ms).
//  3. restart the member, deregister B, wait for {A}, deregister A.
//
// Each wait is bounded by -timeout (90 s); a step that never completes is printed as
// "timeout". Run it under the cluster's test lock:
//
//	flock -o ~/.cache/sd-registries/run/locks/etcd-cluster.lock \
//	    gokit-cluster -backend etcd -members "$SD_TEST_ETCD_CLUSTER" -reps 10
//
// go-kit's Registrars log instead of returning errors; a Register "succeeded" when the
// Registrar's logger saw no "err" key during the call (and, for etcd/zk/consul, saw
// action=register, which go-kit logs only after the client call returned nil).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/log"
)

var (
	backendFlag = flag.String("backend", "", "etcd, zk, consul or eureka")
	membersFlag = flag.String("members", "", "comma-separated addresses: etcd/zk members, the consul client agent, eureka service URLs")
	repsFlag    = flag.Int("reps", 10, "repetitions")
	timeoutFlag = flag.Duration("timeout", 90*time.Second, "bound of every wait")
	scriptFlag  = flag.String("registries", "/work/main/scripts/registries", "the scripts/registries to run leader/kill/restart with")
	logFlag     = flag.String("log", "", "go-kit's own log lines go here (default: stderr)")
)

// registration is one instance registered through one backend client; try makes a NEW
// go-kit Registrar and calls Register once.
type registration interface {
	try() (ok bool, err string)
	deregister()
	close()
}

type backend interface {
	cluster() string // the scripts/registries cluster name
	instancer(svc string, logger log.Logger) (sd.Instancer, func(), error)
	registration(svc, id, instance string, logger log.Logger) (registration, error)
}

var logger log.Logger

func main() {
	flag.Parse()
	closeInheritedOnExec()
	members := strings.Split(*membersFlag, ",")
	if *membersFlag == "" {
		fail("-members is required")
	}
	var out io.Writer = os.Stderr
	if *logFlag != "" {
		f, err := os.Create(*logFlag)
		if err != nil {
			fail("log: %v", err)
		}
		defer f.Close()
		out = f
	}
	logger = log.With(log.NewLogfmtLogger(log.NewSyncWriter(out)), "ts", log.DefaultTimestampUTC)

	var b backend
	switch *backendFlag {
	case "etcd":
		b = &etcdBackend{members: members}
	case "zk":
		b = &zkBackend{members: members}
	case "consul":
		b = &consulBackend{agent: members[0]}
	case "eureka":
		b = &eurekaBackend{urls: members}
	default:
		fail("-backend etcd|zk|consul|eureka")
	}

	var results []result
	for rep := 1; rep <= *repsFlag; rep++ {
		r := runRep(b, rep)
		results = append(results, r)
		fmt.Printf("gokit-cluster-figure backend=%s fault=leader-killed rep=%d killed=%s registrar_ms=%s instancer_ms=%s empty_picks=%d lost=%v register_attempts=%d instancer_errs=%d back_to_A_ms=%s%s\n",
			*backendFlag, rep, r.killed, ms(r.registrar), ms(r.instancer), r.empty, r.lost, r.attempts, r.instErrs, ms(r.backToA), r.note)
		if r.fatal {
			break
		}
	}
	summary("registrar_ms", results, func(r result) time.Duration { return r.registrar })
	summary("instancer_ms", results, func(r result) time.Duration { return r.instancer })
	var empty int64
	lost := 0
	for _, r := range results {
		empty += r.empty
		if r.lost {
			lost++
		}
	}
	fmt.Printf("gokit-cluster-summary backend=%s empty_picks_total=%d reps_with_A_lost=%d/%d\n", *backendFlag, empty, lost, len(results))
}

// closeInheritedOnExec marks every inherited descriptor above stderr close-on-exec. flock(1)
// without -o hands its lock descriptor to this program; were it passed on to
// `scripts/registries restart`, the restarted server would hold the cluster's lock forever.
func closeInheritedOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gokit-cluster: "+format+"\n", args...)
	os.Exit(2)
}

const timedOut = time.Duration(-1)

func ms(d time.Duration) string {
	if d == timedOut {
		return "timeout"
	}
	return fmt.Sprint(d.Milliseconds())
}

func summary(name string, rs []result, f func(result) time.Duration) {
	var ok []time.Duration
	timeouts := 0
	for _, r := range rs {
		if d := f(r); d == timedOut {
			timeouts++
		} else {
			ok = append(ok, d)
		}
	}
	sort.Slice(ok, func(i, j int) bool { return ok[i] < ok[j] })
	p50, max := "-", "-"
	if len(ok) > 0 {
		p50 = ms(ok[(len(ok)-1)/2])
		max = ms(ok[len(ok)-1])
	}
	fmt.Printf("gokit-cluster-summary backend=%s %s p50=%s max=%s n=%d timeouts=%d\n", *backendFlag, name, p50, max, len(ok), timeouts)
}

// ---- scripts/registries ----------------------------------------------------------------

func registries(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, *scriptFlag, args...)
	cmd.Dir = filepath.Dir(filepath.Dir(*scriptFlag))
	cmd.Env = os.Environ()
	if os.Getenv("SD_REGISTRIES_DIR") == "" {
		cmd.Env = append(cmd.Env, "SD_REGISTRIES_DIR="+filepath.Join(cmd.Dir, "target/registries"))
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

func leader(b backend, timeout time.Duration) (string, error) {
	if b.cluster() == "eureka-peers" {
		return "eureka-peers-1", nil // no leader: peer 1 is the first service URL
	}
	deadline := time.Now().Add(timeout)
	for {
		l, err := registries(30*time.Second, "leader", b.cluster())
		if err == nil && l != "" {
			return l, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no leader of %s within %v: %v", b.cluster(), timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ---- the Endpointer, read every 2 ms ---------------------------------------------------

type watcher struct {
	mu               sync.Mutex
	current          []string // sorted instances the Endpointer serves
	empty            int64
	lost             bool
	counting, checkA atomic.Bool
	a                string
	stop             chan struct{}
	done             chan struct{}
}

func factory(instance string) (endpoint.Endpoint, io.Closer, error) {
	return func(context.Context, interface{}) (interface{}, error) { return instance, nil }, nil, nil
}

func watch(ep sd.Endpointer, a string) *watcher {
	w := &watcher{a: a, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			eps, _ := ep.Endpoints()
			set := make([]string, 0, len(eps))
			for _, e := range eps {
				v, _ := e(context.Background(), nil)
				set = append(set, v.(string))
			}
			sort.Strings(set)
			w.mu.Lock()
			w.current = set
			if w.counting.Load() && len(set) == 0 {
				w.empty++
			}
			if w.checkA.Load() && !contains(set, w.a) {
				w.lost = true
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// waitFor waits until the Endpointer serves exactly want; it returns the time since since,
// or timedOut.
func (w *watcher) waitFor(want []string, since time.Time, timeout time.Duration) time.Duration {
	sort.Strings(want)
	key := strings.Join(want, ",")
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		cur := strings.Join(w.current, ",")
		w.mu.Unlock()
		if cur == key {
			return time.Since(since)
		}
		time.Sleep(time.Millisecond)
	}
	return timedOut
}

func (w *watcher) serving() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return "{" + strings.Join(w.current, ",") + "}"
}

// ---- one repetition --------------------------------------------------------------------

type result struct {
	killed                        string
	registrar, instancer, backToA time.Duration
	empty                         int64
	lost                          bool
	attempts, instErrs            int
	note                          string
	fatal                         bool
}

// capture is the logger given to one Registrar: it records whether go-kit logged an error
// or action=register.
type capture struct {
	mu         sync.Mutex
	errs       []string
	registered bool
	inner      log.Logger
}

func (c *capture) Log(kv ...interface{}) error {
	c.mu.Lock()
	for i := 0; i+1 < len(kv); i += 2 {
		switch kv[i] {
		case "err":
			c.errs = append(c.errs, fmt.Sprint(kv[i+1]))
		case "action":
			if kv[i+1] == "register" {
				c.registered = true
			}
		}
	}
	c.mu.Unlock()
	return c.inner.Log(kv...)
}

func (c *capture) outcome(needAction bool) (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errs) > 0 {
		return false, c.errs[0]
	}
	if needAction && !c.registered {
		return false, "no action=register logged"
	}
	return true, ""
}

func runRep(b backend, rep int) (r result) {
	to := *timeoutFlag
	svc := fmt.Sprintf("gkc-%s-%d-%d", *backendFlag, os.Getpid(), rep)
	portA, portB := 41000+2*rep, 41001+2*rep
	a, bb := fmt.Sprintf("127.0.0.1:%d", portA), fmt.Sprintf("127.0.0.1:%d", portB)
	lg := log.With(logger, "rep", rep)
	lg.Log("msg", "repetition start", "service", svc)
	r.registrar, r.instancer, r.backToA = timedOut, timedOut, timedOut

	// A cluster with a leader before we start (the previous repetition's restart may
	// still be settling).
	victim, err := leader(b, to)
	if err != nil {
		r.note, r.fatal = " note="+quote(err.Error()), true
		return
	}

	instLog := &capture{inner: log.With(lg, "c", "instancer")}
	inst, stopInst, err := b.instancer(svc, instLog)
	if err != nil {
		r.note, r.fatal = " note="+quote("instancer: "+err.Error()), true
		return
	}
	defer stopInst()
	ep := sd.NewEndpointer(inst, factory, log.With(lg, "c", "endpointer"))
	defer ep.Close()
	w := watch(ep, a)
	defer func() { close(w.stop); <-w.done }()

	regA, err := b.registration(svc, "A", a, log.With(lg, "c", "registrar-A"))
	if err != nil {
		r.note, r.fatal = " note="+quote("A client: "+err.Error()), true
		return
	}
	defer regA.close()
	if ok, msg := regA.try(); !ok {
		r.note, r.fatal = " note="+quote("register A: "+msg), true
		return
	}
	if w.waitFor([]string{a}, time.Now(), to) == timedOut {
		r.note, r.fatal = " note="+quote("endpointer never served A; serving "+w.serving()), true
		regA.deregister()
		return
	}
	// B's client exists before the fault (a running process registering a new instance).
	regB, err := b.registration(svc, "B", bb, log.With(lg, "c", "registrar-B"))
	if err != nil {
		r.note, r.fatal = " note="+quote("B client: "+err.Error()), true
		return
	}
	defer regB.close()
	w.counting.Store(true)
	w.checkA.Store(true)

	// The fault.
	victim, err = leader(b, to)
	if err != nil {
		r.note, r.fatal = " note="+quote(err.Error()), true
		return
	}
	r.killed = victim
	if _, err := registries(2*time.Minute, "kill", victim); err != nil {
		r.note, r.fatal = " note="+quote(err.Error()), true
		return
	}
	kill := time.Now()
	instLog.mu.Lock()
	errsBefore := len(instLog.errs)
	instLog.mu.Unlock()
	lg.Log("msg", "killed", "member", victim)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // registrar: a new Registrar every 100 ms until Register succeeds
		defer wg.Done()
		deadline := kill.Add(to)
		var last string
		for time.Now().Before(deadline) {
			r.attempts++
			done := make(chan struct{})
			var ok bool
			var msg string
			go func() { ok, msg = regB.try(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Until(deadline)):
				r.note += " registrar=" + quote("Register still blocked at the deadline; last error: "+last)
				lg.Log("msg", "register B blocked past the deadline")
				return
			}
			if ok {
				r.registrar = time.Since(kill)
				lg.Log("msg", "B registered", "ms", r.registrar.Milliseconds(), "attempts", r.attempts)
				return
			}
			last = msg
			time.Sleep(100 * time.Millisecond)
		}
		r.note += " registrar=" + quote("last error: "+last)
	}()
	r.instancer = w.waitFor([]string{a, bb}, kill, to)
	wg.Wait()
	if r.instancer == timedOut {
		r.note += " instancer_serving=" + w.serving()
	}
	instLog.mu.Lock()
	r.instErrs = len(instLog.errs) - errsBefore
	instLog.mu.Unlock()
	lg.Log("msg", "measured", "registrar_ms", ms(r.registrar), "instancer_ms", ms(r.instancer))

	// Recovery.
	if _, err := registries(5*time.Minute, "restart", victim); err != nil {
		lg.Log("msg", "restart failed", "err", err)
		r.note += " restart=" + quote(err.Error())
		r.fatal = true
		return
	}
	lg.Log("msg", "restarted", "member", victim)
	dereg := time.Now()
	regB.deregister()
	r.backToA = w.waitFor([]string{a}, dereg, to)
	if r.backToA == timedOut {
		r.note += " back_to_A_serving=" + w.serving()
	}
	w.checkA.Store(false)
	w.counting.Store(false)
	w.mu.Lock()
	r.empty, r.lost = w.empty, w.lost
	w.mu.Unlock()
	regA.deregister()
	lg.Log("msg", "repetition end")
	return
}

func quote(s string) string {
	return fmt.Sprintf("%q", s)
}
