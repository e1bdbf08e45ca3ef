package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/lb"
	"github.com/go-kit/log"
)

// Random pick: lb.NewRandom over sd.NewEndpointer, on one goroutine (go-kit's random
// balancer shares an unsynchronised rand.Rand, so it is not safe on two).
func random(n, iters int) {
	ep := sd.NewEndpointer(sd.FixedInstancer(addrs(n)), factory, log.NewNopLogger())
	defer ep.Close()
	waitEndpoints(ep, n)
	r := lb.NewRandom(ep, 42)
	loop := func(count int) int {
		ok := 0
		for i := 0; i < count; i++ {
			if e, err := r.Endpoint(); err == nil && e != nil {
				ok++
			}
		}
		return ok
	}
	loop(iters / 10)
	m0 := mallocs()
	t0 := time.Now()
	ok := loop(iters)
	d := time.Since(t0)
	m1 := mallocs()
	if ok != iters {
		fmt.Fprintln(os.Stderr, "random pick failed")
		os.Exit(1)
	}
	emit(result{Scenario: "random", N: n, Threads: 1, Ops: iters,
		NsPerOp:     float64(d.Nanoseconds()) / float64(iters),
		AllocsPerOp: float64(m1-m0) / float64(iters)})
}

var errDown = errors.New("connection refused")

// Retry: lb.Retry(3, 1 s, lb.NewRoundRobin(endpointer)) called in a loop on one goroutine;
// the endpoints answer at once. With down=true, one of the two instances fails every call,
// so half the calls take a second attempt.
func retry(down bool, calls int) {
	instances := []string{"10.0.0.1:8080", "10.0.0.2:8080"}
	f := factory
	scenario := "retry"
	if down {
		scenario = "retry_one_down"
		instances[1] = "10.0.0.2:8081"
		f = func(instance string) (endpoint.Endpoint, io.Closer, error) {
			if strings.HasSuffix(instance, ":8081") {
				return func(context.Context, interface{}) (interface{}, error) { return nil, errDown }, nil, nil
			}
			return factory(instance)
		}
	}
	ep := sd.NewEndpointer(sd.FixedInstancer(instances), f, log.NewNopLogger())
	defer ep.Close()
	waitEndpoints(ep, len(instances))
	call := lb.Retry(3, time.Second, lb.NewRoundRobin(ep))
	ctx := context.Background()
	loop := func(count int) int {
		ok := 0
		for i := 0; i < count; i++ {
			if _, err := call(ctx, i); err == nil {
				ok++
			}
		}
		return ok
	}
	loop(calls / 10)
	m0 := mallocs()
	t0 := time.Now()
	ok := loop(calls)
	d := time.Since(t0)
	m1 := mallocs()
	if ok != calls {
		fmt.Fprintln(os.Stderr, scenario, "failed:", calls-ok, "calls")
		os.Exit(1)
	}
	emit(result{Scenario: scenario, N: len(instances), Threads: 1, Ops: calls,
		NsPerOp:     float64(d.Nanoseconds()) / float64(calls),
		AllocsPerOp: float64(m1-m0) / float64(calls)})
}
