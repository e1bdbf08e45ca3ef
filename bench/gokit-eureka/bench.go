package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/eureka"
	"github.com/go-kit/log"
	"github.com/hudl/fargo"
)

// result is bench/gokit's JSON line (the fields this scenario fills).
type result struct {
	Impl         string  `json:"impl"`
	Scenario     string  `json:"scenario"`
	N            int     `json:"n"`
	Threads      int     `json:"threads"`
	NsPerOp      float64 `json:"ns_per_op,omitempty"`
	AllocsPerOp  float64 `json:"allocs_per_op"`
	P50Ns        float64 `json:"p50_ns,omitempty"`
	P99Ns        float64 `json:"p99_ns,omitempty"`
	Ops          int     `json:"ops,omitempty"`
	RequestP50Ns float64 `json:"request_p50_ns,omitempty"`
	Skipped      string  `json:"skipped,omitempty"`
}

func emit(r result) {
	r.Impl = "gokit"
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func percentiles(v []float64) (float64, float64) {
	if len(v) == 0 {
		return 0, 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	at := func(q float64) float64 { return s[int(q*float64(len(s)-1)+0.5)] }
	return at(0.50), at(0.99)
}

func instance(app, id string, port int) *fargo.Instance {
	return &fargo.Instance{
		InstanceId: id, HostName: "127.0.0.1", App: app, IPAddr: "127.0.0.1",
		VipAddress: strings.ToLower(app), SecureVipAddress: strings.ToLower(app),
		Status: fargo.UP, Port: port, PortEnabled: true,
		DataCenterInfo: fargo.DataCenterInfo{Name: fargo.MyOwn},
		LeaseInfo:      fargo.LeaseInfo{RenewalIntervalInSecs: 30, DurationInSecs: 90},
	}
}

// bench: the Eureka row of bench/compare.sh. Propagation on the real Eureka server
// (SD_TEST_EUREKA) with the instancer polling every second (fargo's PollInterval): an anchor
// instance stays registered (go-kit publishes an error instead of an empty set when an app
// has no instance, EU-4, so "gone" could never be observed), and a second one is registered
// and deregistered in turn with go-kit's eureka.Registrar, `changes` times; each time, the
// time from issuing the request to the endpointer (eureka.NewInstancer + sd.NewEndpointer)
// reflecting it. Each change waits a random 0..1 s first: otherwise every change would be
// made just after the poll that showed the previous one, and would always wait a whole
// interval (the Rust side does the same). Waiting as in bench/gokit's Consul scenario: a channel of our own on the
// instancer, then Endpoints() in a runtime.Gosched loop.
func bench(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	scenarios := fs.String("scenarios", "eureka", "only eureka")
	quick := fs.Bool("quick", false, "fewer changes (smoke test)")
	fs.Parse(args)
	if *scenarios != "eureka" {
		fmt.Fprintln(os.Stderr, "gokit-eureka: only -scenarios eureka")
		return 2
	}
	changes := 20
	if *quick {
		changes = 6
	}
	addr := os.Getenv("SD_TEST_EUREKA")
	if addr == "" {
		why := "SD_TEST_EUREKA is not set (run: eval \"$(scripts/registries up eureka)\")"
		fmt.Fprintln(os.Stderr, "gokit eureka scenario skipped:", why)
		emit(result{Scenario: "eureka", Threads: 1, Skipped: why})
		return 0
	}
	conn := connection(addr)
	nop := log.NewNopLogger()
	app := fmt.Sprintf("SDBENCH-GOKIT-%d-%d", os.Getpid(), time.Now().UnixNano())
	anchor := eureka.NewRegistrar(conn, instance(app, "anchor", 18080), nop)
	anchor.Register()
	defer anchor.Deregister()
	moving := eureka.NewRegistrar(conn, instance(app, "moving", 18081), nop)

	instancer := eureka.NewInstancer(conn, app, nop)
	defer instancer.Stop()
	factory := func(string) (endpoint.Endpoint, io.Closer, error) { return endpoint.Nop, nil, nil }
	ep := sd.NewEndpointer(instancer, factory, nop)
	defer ep.Close()
	events := make(chan sd.Event, 64)
	instancer.Register(events)
	defer instancer.Deregister(events)
	count := func() int {
		eps, err := ep.Endpoints()
		if err != nil {
			return -1
		}
		return len(eps)
	}
	wait := func(want int, what string) bool {
		timeout := time.After(30 * time.Second)
		for count() != want {
			select {
			case <-events:
				for j := 0; j < 100_000 && count() != want; j++ {
					runtime.Gosched()
				}
			case <-timeout:
				fmt.Fprintln(os.Stderr, "eureka:", what, "not seen within 30 s")
				return false
			}
		}
		for len(events) > 0 {
			<-events
		}
		return true
	}
	if !wait(1, "the anchor") {
		return 1
	}
	lat := make([]float64, 0, changes)
	req := make([]float64, 0, changes)
	for i := 0; i < changes; i++ {
		want := 1
		time.Sleep(time.Duration(rand.Int63n(int64(time.Second))))
		t0 := time.Now()
		if i%2 == 0 {
			want = 2
			moving.Register()
		} else {
			moving.Deregister()
		}
		req = append(req, float64(time.Since(t0).Nanoseconds()))
		if !wait(want, fmt.Sprintf("change %d", i)) {
			return 1
		}
		lat = append(lat, float64(time.Since(t0).Nanoseconds()))
	}
	p50, p99 := percentiles(lat)
	reqP50, _ := percentiles(req)
	emit(result{Scenario: "eureka", N: 2, Threads: 1, Ops: changes, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		RequestP50Ns: reqP50})
	return 0
}
