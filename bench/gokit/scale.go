package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/consul"
	"github.com/go-kit/kit/sd/etcdv3"
	"github.com/go-kit/log"
	consulapi "github.com/hashicorp/consul/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Scale (issue 17): 1 000 services × 20 instances watched at once, in one process, through
// one Consul agent (consul_scale, SD_TEST_CONSUL) or one etcd 3.4 server (etcd_scale,
// SD_TEST_ETCD), mirroring bench/rust/src/scenarios/scale.rs (its module comment says what
// is measured). go-kit's side: one consul.NewInstancer (or etcdv3.NewInstancer) and one
// sd.NewEndpointer per service, all on one client (one consul/api client; one go-kit
// etcdv3 client, whose WatchPrefix opens a clientv3 Watcher, so a gRPC stream, per
// instancer on the client's one connection).

const (
	scalePer   = 20               // instances per service
	scaleBatch = 128              // registry writes per setup transaction
	scaleWait  = 30 * time.Second // every wait is bounded by this
	nodePrefix = "sdbench-scale-" // catalog nodes of a run: sdbench-scale-<pid>-<j>
)

type scaleParams struct {
	services, changes int
	idle              time.Duration
}

func scaleParamsFor(quick bool) scaleParams {
	p := scaleParams{services: 1000, changes: 50, idle: 10 * time.Second}
	if quick {
		p = scaleParams{services: 50, changes: 5, idle: time.Second}
	}
	if s, err := strconv.Atoi(os.Getenv("SD_SCALE_IDLE_S")); err == nil && s >= 1 && s <= 600 {
		p.idle = time.Duration(s) * time.Second
	}
	return p
}

// instanceHost is the address of instance j of service i, as on the Rust side.
func instanceHost(i, j int) string {
	k := i*scalePer + j
	return fmt.Sprintf("10.%d.%d.%d", k>>16, (k>>8)&255, k&255)
}

// scalePicks are the services changed: xorshift64 from a fixed seed, as on the Rust side.
func scalePicks(services, changes int) []int {
	x := uint64(0x9E3779B97F4A7C15)
	out := make([]int, changes)
	for i := range out {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		out[i] = int(x % uint64(services))
	}
	return out
}

// cpuNs is the process's user + system CPU time, in ns.
func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// openSockets counts the process's open sockets.
func openSockets() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

type scaleBackend interface {
	setup(services int) error
	instancer(i int) (sd.Instancer, error)
	change(i int, add bool) error
	cleanup() error
}

// runScale runs the scenario on b and cleans up whatever happened; a failure is reported as
// a "skipped" line (after the cleanup) and exits non-zero.
func runScale(scenario string, b scaleBackend, p scaleParams) {
	err := b.setup(p.services)
	if err == nil {
		err = measureScale(scenario, b, p)
	}
	if cerr := b.cleanup(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, scenario+":", err)
		os.Exit(1)
	}
}

func measureScale(scenario string, b scaleBackend, p scaleParams) error {
	settle := func() {
		runtime.GC()
		debug.FreeOSMemory()
	}
	settle()
	r0, t0 := rss(), time.Now()
	var h0, h1 runtime.MemStats
	runtime.ReadMemStats(&h0)
	instancers := make([]sd.Instancer, 0, p.services)
	endpointers := make([]*sd.DefaultEndpointer, 0, p.services)
	defer func() {
		for i := range instancers {
			endpointers[i].Close()
			instancers[i].Stop()
		}
	}()
	for i := 0; i < p.services; i++ {
		in, err := b.instancer(i)
		if err != nil {
			return fmt.Errorf("instancer %d: %w", i, err)
		}
		instancers = append(instancers, in)
		endpointers = append(endpointers, sd.NewEndpointer(in, factory, log.NewNopLogger()))
	}
	deadline := time.Now().Add(scaleWait)
	for i, ep := range endpointers {
		for {
			if eps, err := ep.Endpoints(); err == nil && len(eps) == scalePer {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("service %d: endpointer never served %d endpoints", i, scalePer)
			}
			time.Sleep(time.Millisecond)
		}
	}
	start := time.Since(t0)
	raw := rss()
	settle()
	settled := rss()
	runtime.ReadMemStats(&h1)
	for i, ep := range endpointers {
		eps, _ := ep.Endpoints()
		got := make([]string, 0, len(eps))
		for _, e := range eps {
			v, _ := e(context.Background(), nil)
			got = append(got, v.(string))
		}
		want := make([]string, scalePer)
		for j := range want {
			want[j] = instanceHost(i, j) + ":8080"
		}
		sort.Strings(got)
		sort.Strings(want)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("service %d: endpointer serves %v, not %v", i, got, want)
		}
	}
	// At rest: every blocking query / watch parked in the registry.
	time.Sleep(2 * time.Second)
	sockets := openSockets()
	c0, w0 := cpuNs(), time.Now()
	time.Sleep(p.idle)
	cpu := float64(cpuNs()-c0) / 1e6 / time.Since(w0).Seconds()

	var lat, req []float64
	for _, k := range scalePicks(p.services, p.changes) {
		events := make(chan sd.Event, 64) // buffered: go-kit's broadcast never waits on it
		instancers[k].Register(events)
		for len(events) > 0 {
			<-events
		}
		for _, add := range []bool{true, false} {
			want := scalePer
			if add {
				want++
			}
			t := time.Now()
			if err := b.change(k, add); err != nil {
				instancers[k].Deregister(events)
				return err
			}
			req = append(req, float64(time.Since(t).Nanoseconds()))
			if !awaitCount(endpointers[k], events, want, scaleWait) {
				instancers[k].Deregister(events)
				return fmt.Errorf("service %d: endpointer never served %d endpoints", k, want)
			}
			lat = append(lat, float64(time.Since(t).Nanoseconds()))
		}
		instancers[k].Deregister(events)
	}
	p50, p99 := percentiles(lat)
	reqP50, _ := percentiles(req)
	f := func(v float64) *float64 { return &v }
	emit(result{Scenario: scenario, N: p.services, Threads: 1, Ops: len(lat), NsPerOp: p50, P50Ns: p50,
		P99Ns: p99, RequestP50Ns: reqP50,
		RssBytes: f(float64(settled - r0)), RssRawBytes: f(float64(raw - r0)),
		HeapBytes: f(float64(int64(h1.HeapAlloc) - int64(h0.HeapAlloc))),
		CPUMsPerS: f(cpu), StartNs: f(float64(start.Nanoseconds())), Sockets: &sockets})
	return nil
}

// Consul: the instances are registered in the catalog on 20 nodes of this run, through
// /v1/txn, 128 a transaction; the changes go through /v1/catalog/register and deregister.
type consulScale struct {
	api    *consulapi.Client
	client consul.Client
	run    string
}

func (c *consulScale) node(j int) string    { return fmt.Sprintf("%s%s-%d", nodePrefix, c.run, j) }
func (c *consulScale) service(i int) string { return fmt.Sprintf("sdbench-scale-%s-s%d", c.run, i) }

// sweep deregisters the nodes of runs whose process is gone (killed before its cleanup).
func (c *consulScale) sweep() error {
	nodes, _, err := c.api.Catalog().Nodes(nil)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		rest, ok := strings.CutPrefix(n.Node, nodePrefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		if _, err := c.api.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: n.Node}, nil); err != nil {
			return err
		}
	}
	return nil
}

func (c *consulScale) setup(services int) error {
	if err := c.sweep(); err != nil {
		return err
	}
	for j := 0; j < scalePer; j++ {
		reg := &consulapi.CatalogRegistration{Node: c.node(j), Address: fmt.Sprintf("10.255.0.%d", j)}
		if _, err := c.api.Catalog().Register(reg, nil); err != nil {
			return err
		}
	}
	var ops consulapi.TxnOps
	for i := 0; i < services; i++ {
		for j := 0; j < scalePer; j++ {
			ops = append(ops, &consulapi.TxnOp{Service: &consulapi.ServiceTxnOp{
				Verb: consulapi.ServiceSet, Node: c.node(j),
				Service: consulapi.AgentService{ID: fmt.Sprintf("s%d-%d", i, j), Service: c.service(i),
					Address: instanceHost(i, j), Port: 8080}}})
		}
	}
	for len(ops) > 0 {
		n := min(scaleBatch, len(ops))
		ok, resp, _, err := c.api.Txn().Txn(ops[:n], nil)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("txn refused: %v", resp.Errors)
		}
		ops = ops[n:]
	}
	return nil
}

func (c *consulScale) instancer(i int) (sd.Instancer, error) {
	return consul.NewInstancer(c.client, log.NewNopLogger(), c.service(i), nil, true), nil
}

func (c *consulScale) change(i int, add bool) error {
	id := fmt.Sprintf("s%d-extra", i)
	var err error
	if add {
		_, err = c.api.Catalog().Register(&consulapi.CatalogRegistration{Node: c.node(0), Address: "10.255.0.0",
			Service: &consulapi.AgentService{ID: id, Service: c.service(i), Address: "10.254.0.1", Port: 9090}}, nil)
	} else {
		_, err = c.api.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: c.node(0), ServiceID: id}, nil)
	}
	return err
}

func (c *consulScale) cleanup() error {
	var first error
	for j := 0; j < scalePer; j++ {
		if _, err := c.api.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: c.node(j)}, nil); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func consulScaleRun(quick bool) {
	api, ok := consulAPI("consul_scale")
	if !ok {
		return
	}
	b := &consulScale{api: api, client: consul.NewClient(api), run: strconv.Itoa(os.Getpid())}
	runScale("consul_scale", b, scaleParamsFor(quick))
}

// etcd: the keys are written with clientv3 (a client of their own), 128 puts a transaction,
// all on one 10-minute lease (so they expire if the run dies); removed at the end.
type etcdScale struct {
	writer  *clientv3.Client
	watcher etcdv3.Client
	cancel  context.CancelFunc
	root    string
	lease   clientv3.LeaseID
}

func (e *etcdScale) dir(i int) string { return fmt.Sprintf("%s/s%d/", e.root, i) }

func (e *etcdScale) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), scaleWait)
}

func (e *etcdScale) setup(services int) error {
	ctx, cancel := e.ctx()
	defer cancel()
	l, err := e.writer.Grant(ctx, 600)
	if err != nil {
		return err
	}
	e.lease = l.ID
	var ops []clientv3.Op
	for i := 0; i < services; i++ {
		for j := 0; j < scalePer; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%sn%d", e.dir(i), j), instanceHost(i, j)+":8080",
				clientv3.WithLease(e.lease)))
		}
	}
	for len(ops) > 0 {
		n := min(scaleBatch, len(ops))
		if _, err := e.writer.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

func (e *etcdScale) instancer(i int) (sd.Instancer, error) {
	return etcdv3.NewInstancer(e.watcher, e.dir(i), log.NewNopLogger())
}

func (e *etcdScale) change(i int, add bool) error {
	ctx, cancel := e.ctx()
	defer cancel()
	var err error
	if add {
		_, err = e.writer.Put(ctx, e.dir(i)+"extra", "10.254.0.1:9090")
	} else {
		_, err = e.writer.Delete(ctx, e.dir(i)+"extra")
	}
	return err
}

func (e *etcdScale) cleanup() error {
	defer e.cancel() // ends the go-kit client's watches
	ctx, cancel := e.ctx()
	defer cancel()
	_, err := e.writer.Delete(ctx, e.root+"/", clientv3.WithPrefix())
	if e.lease != 0 {
		if _, rerr := e.writer.Revoke(ctx, e.lease); err == nil {
			err = rerr
		}
	}
	e.writer.Close()
	return err
}

func etcdScaleRun(quick bool) {
	addr, ok := registryAddr("etcd_scale", "SD_TEST_ETCD")
	if !ok {
		return
	}
	writer, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + addr}, DialTimeout: 3 * time.Second})
	if err != nil {
		skipScenario("etcd_scale", err.Error())
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	watcher, err := etcdv3.NewClient(ctx, []string{"http://" + addr}, etcdv3.ClientOptions{})
	if err != nil {
		cancel()
		writer.Close()
		skipScenario("etcd_scale", err.Error())
		return
	}
	b := &etcdScale{writer: writer, watcher: watcher, cancel: cancel,
		root: fmt.Sprintf("/sdbench-scale/%d", os.Getpid())}
	runScale("etcd_scale", b, scaleParamsFor(quick))
}
