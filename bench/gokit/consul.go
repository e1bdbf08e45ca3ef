package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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
	api, ok := consulAPI("consul")
	if !ok {
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

// skipScenario reports a registry scenario that could not run.
func skipScenario(scenario, why string) {
	fmt.Fprintln(os.Stderr, "gokit", scenario, "scenario skipped:", why)
	emit(result{Scenario: scenario, Threads: 1, Skipped: why})
}

// consulAPI returns a consul/api client for the agent at SD_TEST_CONSUL if it is set and
// reachable; otherwise it reports the scenario as skipped and returns false.
func consulAPI(scenario string) (*consulapi.Client, bool) {
	addr, ok := registryAddr(scenario, "SD_TEST_CONSUL")
	if !ok {
		return nil, false
	}
	api, err := consulapi.NewClient(&consulapi.Config{Address: addr})
	if err != nil {
		skipScenario(scenario, err.Error())
		return nil, false
	}
	return api, true
}

// registryAddr returns the registry address in env if it is set and reachable; otherwise it
// reports the scenario as skipped and returns false.
func registryAddr(scenario, env string) (string, bool) {
	addr := os.Getenv(env)
	if addr == "" {
		skipScenario(scenario, env+" is not set (run: eval \"$(scripts/registries up)\")")
		return "", false
	}
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		skipScenario(scenario, fmt.Sprintf("%s is not reachable: %v", addr, err))
		return "", false
	}
	c.Close()
	return addr, true
}

// measure registers and deregisters one instance of service in turn, `changes` times, and
// returns the latency of each change and the duration of each agent request, in ns.
func measure(client consul.Client, service string, changes int) ([]float64, []float64) {
	reg := &consulapi.AgentServiceRegistration{ID: service + "-1", Name: service, Address: "127.0.0.1", Port: 18080}
	instancer := consul.NewInstancer(client, log.NewNopLogger(), service, nil, false)
	defer instancer.Stop()
	defer client.Deregister(reg)
	return propagate("consul", instancer, changes, func(register bool) error {
		if register {
			return client.Register(reg)
		}
		return client.Deregister(reg)
	})
}

// propagate applies `changes` alternating changes (register first) with apply, and returns
// the latency of each (from just before apply to the endpointer over instancer reflecting
// it) and the duration of each apply, in ns. go-kit's endpointer has no change notification:
// a channel of our own on the instancer says when an event was broadcast, then Endpoints()
// is checked in a runtime.Gosched loop until the endpointer's goroutine has applied it.
func propagate(name string, instancer sd.Instancer, changes int, apply func(register bool) error) ([]float64, []float64) {
	ep := sd.NewEndpointer(instancer, factory, log.NewNopLogger())
	defer ep.Close()
	events := make(chan sd.Event, 64) // buffered: go-kit's broadcast never waits on it
	instancer.Register(events)
	defer instancer.Deregister(events)

	lat := make([]float64, 0, changes)
	req := make([]float64, 0, changes)
	for i := 0; i < changes; i++ {
		want := 0
		if i%2 == 0 {
			want = 1
		}
		t0 := time.Now()
		if err := apply(want == 1); err != nil {
			fmt.Fprintln(os.Stderr, name+":", err)
			os.Exit(1)
		}
		req = append(req, float64(time.Since(t0).Nanoseconds()))
		awaitEndpoints(ep, events, want, name, i)
		lat = append(lat, float64(time.Since(t0).Nanoseconds()))
	}
	return lat, req
}

// awaitEndpoints waits (at most 10 s, else exits) until ep serves `want` endpoints (see
// awaitCount).
func awaitEndpoints(ep sd.Endpointer, events chan sd.Event, want int, what string, change int) {
	if !awaitCount(ep, events, want, 10*time.Second) {
		fmt.Fprintln(os.Stderr, what+": change", change, "not seen within 10 s")
		os.Exit(1)
	}
}

// awaitCount waits (at most `limit`) until ep serves `want` endpoints, woken by the
// instancer's events on `events` (a channel of the benchmark's own, registered on the
// instancer), then drops the events of this change so the channel never fills (a full
// channel would block go-kit's broadcast, and with it the endpointer). False on timeout.
func awaitCount(ep sd.Endpointer, events chan sd.Event, want int, limit time.Duration) bool {
	reflects := func() bool {
		eps, err := ep.Endpoints()
		return err == nil && len(eps) == want
	}
	timeout := time.After(limit)
	for !reflects() {
		select {
		case <-events:
			// The endpointer's goroutine gets the same event; wait for it to apply it.
			for j := 0; j < 100_000 && !reflects(); j++ {
				runtime.Gosched()
			}
		case <-timeout:
			return false
		}
	}
	for len(events) > 0 {
		<-events
	}
	return true
}

// consulRequest times the agent request alone (scenario "consulreq"): `pairs`
// registrations and deregistrations of one instance in turn, no instancer running. Two
// clients in interleaved blocks of 50 pairs: go-kit's consul.Client over consul/api
// ("consul_request", the request row of the consul scenario by itself) and a bare
// net/http client sending the same two PUTs ("consul_request_raw"). The Rust side
// (bench/rust/src/scenarios/consulreq.rs) does the same with ConsulRegistrar, its Client and
// a bare reqwest client.
func consulRequest(pairs int) {
	const block = 50
	if pairs < block {
		pairs = block
	}
	addr, ok := registryAddr("consul_request", "SD_TEST_CONSUL")
	if !ok {
		return
	}
	api, err := consulapi.NewClient(&consulapi.Config{Address: addr})
	if err != nil {
		skipScenario("consul_request", err.Error())
		return
	}
	client := consul.NewClient(api)
	service := fmt.Sprintf("sdbench-gokit-req-%d-%d", os.Getpid(), time.Now().UnixNano())
	reg := &consulapi.AgentServiceRegistration{ID: service + "-1", Name: service, Address: "127.0.0.1", Port: 18080}
	body, err := json.Marshal(reg)
	if err != nil {
		skipScenario("consul_request", err.Error())
		return
	}
	raw := &http.Client{Timeout: 10 * time.Second}
	put := func(url string, b []byte) error {
		req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(b))
		if err != nil {
			return err
		}
		resp, err := raw.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("raw request: HTTP %d", resp.StatusCode)
		}
		return nil
	}
	registerURL := "http://" + addr + "/v1/agent/service/register"
	deregisterURL := "http://" + addr + "/v1/agent/service/deregister/" + reg.ID
	var times [2][]float64
	var cpu [2][2]uint64
	for b := 0; b < pairs/block+1; b++ {
		for k := range times {
			run0, slices0 := processCPU()
			for i := 0; i < 2*block; i++ {
				register := i%2 == 0
				t0 := time.Now()
				var err error
				switch {
				case k == 0 && register:
					err = client.Register(reg)
				case k == 0:
					err = client.Deregister(reg)
				case register:
					err = put(registerURL, body)
				default:
					err = put(deregisterURL, nil)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "consul_request:", err)
					os.Exit(1)
				}
				if b > 0 { // the first block of each warms up
					times[k] = append(times[k], float64(time.Since(t0).Nanoseconds()))
				}
			}
			if b > 0 {
				run1, slices1 := processCPU()
				cpu[k][0] += run1 - run0
				cpu[k][1] += slices1 - slices0
			}
		}
	}
	_ = client.Deregister(reg)
	for k, name := range []string{"consul_request", "consul_request_raw"} {
		p50, p99 := percentiles(times[k])
		// The requests alternate: registrations at even indexes, deregistrations at odd.
		var half [2][]float64
		for i, v := range times[k] {
			half[i%2] = append(half[i%2], v)
		}
		reg, _ := percentiles(half[0])
		dereg, _ := percentiles(half[1])
		ops := float64(max(len(times[k]), 1))
		emit(result{Scenario: name, N: 1, Threads: 1, Ops: len(times[k]), NsPerOp: p50, P50Ns: p50, P99Ns: p99,
			RegisterP50Ns: reg, DeregisterP50Ns: dereg,
			CPUNsPerOp: float64(cpu[k][0]) / ops, SlicesPerOp: float64(cpu[k][1]) / ops})
	}
}

// processCPU returns the CPU time (ns) and the times put on a CPU so far, summed over the
// threads of this process (/proc/self/task/*/schedstat: run time, wait time, timeslices),
// as on the Rust side; zeros where unreadable.
func processCPU() (uint64, uint64) {
	var run, slices uint64
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, 0
	}
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		var r, w, s uint64
		if n, _ := fmt.Sscan(string(b), &r, &w, &s); n == 3 {
			run += r
			slices += s
		}
	}
	return run, slices
}
