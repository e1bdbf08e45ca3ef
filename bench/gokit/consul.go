package main

import (
	"fmt"
	"net"
	"os"
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
// sd.NewEndpointer) reflecting it. go-kit's endpointer has no change
// notification, so the benchmark polls Endpoints() every 50 µs.
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
	lat := measure(client, service, changes)
	p50, p99 := percentiles(lat)
	emit(result{Scenario: "consul", N: 1, Threads: 1, Ops: changes, NsPerOp: p50, P50Ns: p50, P99Ns: p99})
}

// measure registers and deregisters one instance of service in turn, `changes` times, and
// returns the latency of each change in ns.
func measure(client consul.Client, service string, changes int) []float64 {
	reg := &consulapi.AgentServiceRegistration{ID: service + "-1", Name: service, Address: "127.0.0.1", Port: 18080}
	instancer := consul.NewInstancer(client, log.NewNopLogger(), service, nil, false)
	defer instancer.Stop()
	ep := sd.NewEndpointer(instancer, factory, log.NewNopLogger())
	defer ep.Close()
	defer client.Deregister(reg)

	lat := make([]float64, 0, changes)
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
		deadline := t0.Add(10 * time.Second)
		for {
			eps, err := ep.Endpoints()
			if err == nil && len(eps) == want {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, "consul: change", i, "not seen within 10 s")
				os.Exit(1)
			}
			time.Sleep(50 * time.Microsecond)
		}
		lat = append(lat, float64(time.Since(t0).Nanoseconds()))
	}
	return lat
}
