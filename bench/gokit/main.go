// Command gokit-bench runs the go-kit side of the sdkit comparison (see bench/compare.sh and
// docs/BENCHMARKS.md, "go-kit comparison"). Every scenario uses go-kit's public API the way a
// go-kit user writes it, and prints one JSON line per measurement:
//
//	{"impl":"gokit","scenario":"pick","n":10,"threads":1,"ns_per_op":..,"allocs_per_op":..}
//
// The Rust side (bench/rust, binary sd-compare) runs the same scenarios with the same
// parameters and the same timing method.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/dnssrv"
	"github.com/go-kit/kit/sd/lb"
	"github.com/go-kit/log"
)

// result is one JSON line. Optional fields are omitted when zero.
type result struct {
	Impl             string  `json:"impl"`
	Scenario         string  `json:"scenario"`
	N                int     `json:"n"`
	Threads          int     `json:"threads"`
	NsPerOp          float64 `json:"ns_per_op,omitempty"`
	AllocsPerOp      float64 `json:"allocs_per_op"`
	P50Ns            float64 `json:"p50_ns,omitempty"`
	P99Ns            float64 `json:"p99_ns,omitempty"`
	Ops              int     `json:"ops,omitempty"`
	BytesPerInstance float64 `json:"bytes_per_instance,omitempty"`
	HeapPerInstance  float64 `json:"heap_bytes_per_instance,omitempty"`
	Note             string  `json:"note,omitempty"`
	RequestP50Ns     float64 `json:"request_p50_ns,omitempty"`
	CPUNsPerOp       float64 `json:"cpu_ns_per_op,omitempty"`
	SlicesPerOp      float64 `json:"slices_per_op,omitempty"`
	RegisterP50Ns    float64 `json:"register_p50_ns,omitempty"`
	DeregisterP50Ns  float64 `json:"deregister_p50_ns,omitempty"`
	Skipped          string  `json:"skipped,omitempty"`
	// Scale scenarios (scale.go); pointers so that a 0 is still printed.
	RssBytes    *float64 `json:"rss_bytes,omitempty"`
	RssRawBytes *float64 `json:"rss_raw_bytes,omitempty"`
	HeapBytes   *float64 `json:"heap_bytes,omitempty"`
	CPUMsPerS   *float64 `json:"cpu_ms_per_s,omitempty"`
	StartNs     *float64 `json:"start_ns,omitempty"`
	Sockets     *int     `json:"sockets,omitempty"`
}

func emit(r result) {
	r.Impl = "gokit"
	b, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "json:", err)
		os.Exit(1)
	}
	fmt.Println(string(b))
}

// addr is the instance string of instance i: 10.x.y.z:8080, as in the Rust side.
func addr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d:8080", i>>16, (i>>8)&255, i&255)
}

func addrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = addr(i)
	}
	return out
}

// factory is what a go-kit user writes: the endpoint closes over its instance string
// (a real one would hold a client for it).
func factory(instance string) (endpoint.Endpoint, io.Closer, error) {
	return func(context.Context, interface{}) (interface{}, error) { return instance, nil }, nil, nil
}

func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// waitEndpoints waits until the endpointer's goroutine has applied the first state.
func waitEndpoints(e sd.Endpointer, n int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if eps, err := e.Endpoints(); err == nil && len(eps) == n {
			return
		}
		runtime.Gosched()
	}
	fmt.Fprintln(os.Stderr, "endpointer never reached", n, "endpoints")
	os.Exit(1)
}

// Scenario 1: round robin pick over sd.NewEndpointer (go-kit's sd/benchmark_test.go setup,
// with lb.NewRoundRobin on top). threads goroutines each do `iters` picks on the same
// balancer; ns_per_op is wall time / iters, i.e. ns per pick per thread.
func pick(n, threads, iters int) {
	instancer := sd.FixedInstancer(addrs(n))
	ep := sd.NewEndpointer(instancer, factory, log.NewNopLogger())
	defer ep.Close()
	waitEndpoints(ep, n)
	rr := lb.NewRoundRobin(ep)

	run := func(count int) time.Duration {
		var wg sync.WaitGroup
		start := make(chan struct{})
		var sink atomic.Int64
		for t := 0; t < threads; t++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				var ok int64
				for i := 0; i < count; i++ {
					e, err := rr.Endpoint()
					if err == nil && e != nil {
						ok++
					}
				}
				sink.Add(ok)
			}()
		}
		t0 := time.Now()
		close(start)
		wg.Wait()
		d := time.Since(t0)
		if sink.Load() != int64(threads*count) {
			fmt.Fprintln(os.Stderr, "pick failed")
			os.Exit(1)
		}
		return d
	}
	run(iters / 10) // warm up
	m0 := mallocs()
	d := run(iters)
	m1 := mallocs()
	emit(result{Scenario: "pick", N: n, Threads: threads, Ops: iters * threads,
		NsPerOp:     float64(d.Nanoseconds()) / float64(iters),
		AllocsPerOp: float64(m1-m0) / float64(iters*threads)})
}

// chanInstancer is the smallest sd.Instancer: it hands the endpointer's channel to the
// benchmark, which then plays the instancer and sends events itself.
type chanInstancer struct{ ch chan chan<- sd.Event }

func (c chanInstancer) Register(ch chan<- sd.Event) { c.ch <- ch }
func (c chanInstancer) Deregister(chan<- sd.Event)  {}
func (c chanInstancer) Stop()                       {}

// Scenario 2: one instance changed in a set of n, applied to the endpointer. go-kit applies
// events on the endpointer's own goroutine, reading an unbuffered channel; a send completes
// once the previous update is done, so `updates` sends followed by one cheap fence event
// (an error event: logged and ignored without InvalidateOnError) time `updates` updates.
func update(scenario string, n, updates int) {
	src := chanInstancer{ch: make(chan chan<- sd.Event, 1)}
	ep := sd.NewEndpointer(src, factory, log.NewNopLogger())
	defer ep.Close()
	ch := <-src.ch
	a := addrs(n)
	b := append([]string(nil), a...)
	b[n/2] = "192.168.0.1:9"
	sort.Strings(b)
	// Each event carries its own slice, as go-kit's instance cache deep-copies every event.
	events := make([][]string, updates+20)
	for i := range events {
		src := a
		if i%2 == 0 {
			src = b
		}
		events[i] = append([]string(nil), src...)
	}
	ch <- sd.Event{Instances: append([]string(nil), a...)}
	fence := sd.Event{Err: fmt.Errorf("fence")}
	for _, e := range events[updates:] { // warm up
		ch <- sd.Event{Instances: e}
	}
	ch <- fence
	runtime.GC()
	m0 := mallocs()
	t0 := time.Now()
	for _, e := range events[:updates] {
		ch <- sd.Event{Instances: e}
	}
	ch <- fence
	d := time.Since(t0)
	m1 := mallocs()
	emit(result{Scenario: scenario, N: n, Threads: 1, Ops: updates,
		NsPerOp:     float64(d.Nanoseconds()) / float64(updates),
		AllocsPerOp: float64(m1-m0) / float64(updates)})
}

// Scenario 3: one instancer, `subs` subscribers; the time from a new set published to the
// last subscriber seeing it. go-kit's instance cache is internal; its public users are the
// backend instancers. The DNS SRV instancer takes a refresh ticker and a lookup function,
// which makes it a go-kit instancer over a source the benchmark controls: a tick makes it
// call lookup, which returns the next set. t0 is taken when lookup returns (the registry's
// answer is in hand); the same point on the Rust side is before the instances are built.
func fanout(n, subs, rounds int) {
	src := newSRVSource(n)
	defer src.in.Stop()
	in := src.in

	var seen atomic.Int64
	done := make(chan time.Time, 1)
	var chans []chan sd.Event
	for s := 0; s < subs; s++ {
		ch := make(chan sd.Event) // unbuffered, like sd.NewEndpointer's
		chans = append(chans, ch)
		go func() {
			for range ch {
				if seen.Add(1) == int64(subs) {
					done <- time.Now()
				}
			}
		}()
		in.Register(ch) // sends the current state at once
	}
	<-done
	lat := make([]float64, 0, rounds)
	var m0 uint64
	for r := 1; r <= rounds+10; r++ {
		if r == 11 {
			m0 = mallocs()
		}
		seen.Store(0)
		src.publish(r % 2)
		t1 := <-done
		if r > 10 {
			lat = append(lat, float64(t1.Sub(src.t0).Nanoseconds()))
		}
	}
	m1 := mallocs()
	for _, ch := range chans {
		in.Deregister(ch)
	}
	p50, p99 := percentiles(lat)
	emit(result{Scenario: "fanout", N: n, Threads: subs, Ops: rounds, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		AllocsPerOp: float64(m1-m0) / float64(rounds)})
}

func percentiles(v []float64) (float64, float64) {
	if len(v) == 0 {
		return 0, 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	at := func(q float64) float64 {
		i := int(q*float64(len(s)-1) + 0.5)
		return s[i]
	}
	return at(0.50), at(0.99)
}

// rss returns the resident set size in bytes, from /proc/self/statm.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	var pages int64
	fmt.Sscan(f[1], &pages)
	return pages * int64(os.Getpagesize())
}

// Scenario 5: resident bytes per instance with n instances held by an endpointer
// (FixedInstancer + sd.NewEndpointer, endpoints made by the closure factory). Freed
// memory is returned to the OS before both readings.
func memory(n int) {
	settle := func() {
		runtime.GC()
		debug.FreeOSMemory()
	}
	settle()
	var h0, h1 runtime.MemStats
	runtime.ReadMemStats(&h0)
	r0 := rss()
	instancer := sd.FixedInstancer(addrs(n))
	ep := sd.NewEndpointer(instancer, factory, log.NewNopLogger())
	waitEndpoints(ep, n)
	settle()
	runtime.ReadMemStats(&h1)
	r1 := rss()
	emit(result{Scenario: "memory", N: n, Threads: 1,
		BytesPerInstance: float64(r1-r0) / float64(n),
		HeapPerInstance:  float64(int64(h1.HeapAlloc)-int64(h0.HeapAlloc)) / float64(n)})
	runtime.KeepAlive(instancer)
	runtime.KeepAlive(ep)
}

func main() {
	scenarios := flag.String("scenarios", "pick,random,retry,update,fanout", "comma-separated: pick,random,retry,update,fanout,memory,consul,zk,etcd,dns,updatescale,fanoutscale,consulreq,consul_scale,etcd_scale")
	quick := flag.Bool("quick", false, "fewer iterations (smoke test)")
	flag.Parse()
	scale := 1
	if *quick {
		scale = 20
	}
	for _, s := range strings.Split(*scenarios, ",") {
		switch strings.TrimSpace(s) {
		case "pick":
			for _, n := range []int{10, 1000} {
				for _, t := range []int{1, 2} {
					pick(n, t, 10_000_000/scale)
				}
			}
		case "random":
			for _, n := range []int{10, 1000} {
				random(n, 10_000_000/scale)
			}
		case "retry":
			retry(false, 200_000/scale)
			retry(true, 200_000/scale)
		case "update":
			update("update", 10_000, 200/scale+10)
			updatePath("update_path", 10_000, 100/scale+5)
		case "updatescale":
			// The cost of one update as the set grows (sweep.go; the same counts as the Rust side).
			for _, n := range sweep {
				update("update_scale", n, stepUpdates(n)/scale+10)
				updatePath("update_path_scale", n, pathRounds(n)/scale+5)
			}
		case "fanout":
			for _, n := range []int{10, 1000} {
				fanout(n, 100, 400/scale+10)
			}
		case "fanoutscale":
			fanout(10_000, 100, 200/scale+10)
		case "memory":
			memory(100_000)
		case "consul":
			consulPropagation(200 / scale)
		case "consulreq":
			consulRequest(1000 / scale)
		case "zk":
			zkPropagation(200 / scale)
		case "etcd":
			etcdPropagation(200 / scale)
		case "dns":
			dnsPropagation(40/scale + 4)
		case "consul_scale":
			consulScaleRun(*quick)
		case "etcd_scale":
			etcdScaleRun(*quick)
		case "":
		default:
			fmt.Fprintln(os.Stderr, "unknown scenario", s)
			os.Exit(2)
		}
	}
}

// srvSource is go-kit's DNS SRV instancer over answers the benchmark controls: n records,
// and two answers that differ in one record. publish(k) queues answer k and ticks the
// instancer, which calls lookup; lookup takes the answer and records t0, the moment the
// registry's answer is in hand (the same point on the Rust side is before the instances are
// built). Every go-kit backend publishes through the same internal instance cache.
type srvSource struct {
	in      *dnssrv.Instancer
	answers [2][]*net.SRV
	next    chan []*net.SRV
	tick    chan time.Time
	t0      time.Time
}

func newSRVSource(n int) *srvSource {
	records := func(k int) []*net.SRV {
		out := make([]*net.SRV, n)
		for i := range out {
			out[i] = &net.SRV{Target: fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), Port: 8080}
		}
		out[n/2].Port = uint16(9000 + k)
		return out
	}
	src := &srvSource{
		answers: [2][]*net.SRV{records(0), records(1)},
		next:    make(chan []*net.SRV, 1),
		tick:    make(chan time.Time),
	}
	src.next <- src.answers[0]
	lookup := func(string, string, string) (string, []*net.SRV, error) {
		recs := <-src.next
		src.t0 = time.Now()
		return "", recs, nil
	}
	src.in = dnssrv.NewInstancerDetailed("bench", &time.Ticker{C: src.tick}, lookup, log.NewNopLogger())
	return src
}

// publish queues answer k (0 or 1) and makes the instancer look it up.
func (s *srvSource) publish(k int) {
	s.next <- s.answers[k]
	s.tick <- time.Now()
}
