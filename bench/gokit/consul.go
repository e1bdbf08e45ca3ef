package main

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/consul"
	"github.com/go-kit/log"
	consulapi "github.com/hashicorp/consul/api"
)

// Scenario 4: propagation on the real Consul agent started by scripts/registries
// (SD_TEST_CONSUL=host:port). After 20 warm-up changes on another service, one instance of
// a fresh service is registered and deregistered in turn, `changes` times; each time, the
// time from issuing the agent call to the endpointer (consul.NewInstancer +
// sd.NewEndpointer) reflecting it. go-kit's endpointer has no change notification, and a
// 50 µs time.Sleep lasts about 1 ms here, so the benchmark registers a channel of its own on
// the instancer and, once the instancer has broadcast an event, checks Endpoints() in a
// runtime.Gosched loop until the endpointer's goroutine has applied it.
func consulPropagation(changes int) {
	addr := os.Getenv("SD_TEST_CONSUL")
	skip := func(why string) {
		fmt.Fprintln(os.Stderr, "gokit consul scenario skipped:", why)
		emit(result{Scenario: "consul", Threads: 1, Skipped: why})
	}
	if addr == "" {
		skip("SD_TEST_CONSUL is not set (run: eval \"$(scripts/registries up)\")")
		return
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err != nil {
		skip(fmt.Sprintf("Consul at %s is not reachable: %v", addr, err))
		return
	} else {
		c.Close()
	}
	api, err := consulapi.NewClient(&consulapi.Config{Address: addr})
	if err != nil {
		skip(err.Error())
		return
	}
	client := consul.NewClient(api)
	service := fmt.Sprintf("sdbench-gokit-%d-%d", os.Getpid(), time.Now().UnixNano())
	measure(client, service+"-warm", 20) // warm-up: connections, agent caches (as on the Rust side)
	lat, req := measure(client, service, changes)
	p50, p99 := percentiles(lat)
	reqP50, _ := percentiles(req)
	emit(result{Scenario: "consul", N: 1, Threads: 1, Ops: changes, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		RequestP50Ns: reqP50})
}

// measure registers and deregisters one instance of service in turn, `changes` times, and
// returns the latency of each change and the duration of each agent request, in ns.
func measure(client consul.Client, service string, changes int) ([]float64, []float64) {
	reg := &consulapi.AgentServiceRegistration{ID: service + "-1", Name: service, Address: "127.0.0.1", Port: 18080}
	instancer := consul.NewInstancer(client, log.NewNopLogger(), service, nil, false)
	defer instancer.Stop()
	ep := sd.NewEndpointer(instancer, factory, log.NewNopLogger())
	defer ep.Close()
	defer client.Deregister(reg)
	events := make(chan sd.Event, 64) // buffered: go-kit's broadcast never waits on it
	instancer.Register(events)
	defer instancer.Deregister(events)

	lat := make([]float64, 0, changes)
	req := make([]float64, 0, changes)
	for i := 0; i < changes; i++ {
		want := 0
		var err error
		t0 := time.Now()
		if i%2 == 0 {
			want = 1
			err = client.Register(reg)
		} else {
			err = client.Deregister(reg)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "consul:", err)
			os.Exit(1)
		}
		req = append(req, float64(time.Since(t0).Nanoseconds()))
		awaitEndpoints(ep, events, want, "consul", i)
		lat = append(lat, float64(time.Since(t0).Nanoseconds()))
	}
	return lat, req
}

// awaitEndpoints waits (at most 10 s, else exits) until ep serves `want` endpoints, woken by
// the instancer's events on `events` (a channel of the benchmark's own, registered on the
// instancer), then drops the events of this change so the channel never fills (a full
// channel would block go-kit's broadcast, and with it the endpointer).
func awaitEndpoints(ep sd.Endpointer, events chan sd.Event, want int, what string, change int) {
	reflects := func() bool {
		eps, err := ep.Endpoints()
		return err == nil && len(eps) == want
	}
	timeout := time.After(10 * time.Second)
	for !reflects() {
		select {
		case <-events:
			// The endpointer's goroutine gets the same event; wait for it to apply it.
			for j := 0; j < 100_000 && !reflects(); j++ {
				runtime.Gosched()
			}
		case <-timeout:
			fmt.Fprintln(os.Stderr, what+": change", change, "not seen within 10 s")
			os.Exit(1)
		}
	}
	for len(events) > 0 {
		<-events
	}
}
