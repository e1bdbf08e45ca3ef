package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/log"
)

// Scenario 2b: the whole update path. One record changed in an answer of n; the time from
// the registry's answer in hand (the lookup function returning, on the instancer's
// goroutine) to the endpointer serving the new set: the instancer formats the instance
// strings, its cache sorts, compares and copies the set for its subscriber, and the
// endpointer rebuilds its endpoints. The factory signals when it is asked for the new
// instance; the endpointer holds its write lock while it runs, so the Endpoints() call that
// follows returns once the update is complete.
func updatePath(scenario string, n, rounds int) {
	src := newSRVSource(n)
	defer src.in.Stop()
	in := src.in

	made := make(chan struct{}, 1)
	f := func(instance string) (endpoint.Endpoint, io.Closer, error) {
		if strings.HasSuffix(instance, ":9000") || strings.HasSuffix(instance, ":9001") {
			select {
			case made <- struct{}{}:
			default:
			}
		}
		return factory(instance)
	}
	ep := sd.NewEndpointer(in, f, log.NewNopLogger())
	defer ep.Close()
	waitEndpoints(ep, n)
	<-made

	lat := make([]float64, 0, rounds)
	var m0 uint64
	for r := 1; r <= rounds+5; r++ {
		if r == 6 {
			m0 = mallocs()
		}
		src.publish(r % 2)
		select {
		case <-made:
		case <-time.After(10 * time.Second):
			fmt.Fprintln(os.Stderr, "update path: the endpointer did not make the new endpoint within 10 s")
			os.Exit(1)
		}
		if eps, err := ep.Endpoints(); err != nil || len(eps) != n {
			fmt.Fprintln(os.Stderr, "update path: endpointer lost instances")
			os.Exit(1)
		}
		t1 := time.Now()
		if r > 5 {
			lat = append(lat, float64(t1.Sub(src.t0).Nanoseconds()))
		}
	}
	m1 := mallocs()
	p50, p99 := percentiles(lat)
	emit(result{Scenario: scenario, N: n, Threads: 1, Ops: rounds, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		AllocsPerOp: float64(m1-m0) / float64(rounds)})
}
