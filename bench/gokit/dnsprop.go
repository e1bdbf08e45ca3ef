package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/dnssrv"
	"github.com/go-kit/log"
)

// dnsRefresh is the refresh of both sides' DNS instancers: go-kit's ticker, sdkit's
// min_refresh = max_refresh.
const dnsRefresh = 200 * time.Millisecond

// nsupdate applies one change to the test zone with BIND's own nsupdate; both sides change
// the zone the same way, so the tool's start-up cost is in both measurements.
func nsupdate(addr, zone, commands string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	cmd := exec.Command("nsupdate")
	cmd.Stdin = strings.NewReader(fmt.Sprintf("server %s %s\nzone %s\n%s\nsend\n", host, port, zone, commands))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nsupdate: %v: %s", err, out)
	}
	return nil
}

// Scenario "dns": propagation on the real BIND server started by scripts/registries
// (SD_TEST_DNS=host:port, zone SD_TEST_DNS_ZONE). go-kit's dnssrv instancer polls the SRV
// name every dnsRefresh through a Go resolver pointed at that server. A fresh service keeps
// one anchor record (go-kit treats NXDOMAIN as an error and keeps the last set, so without
// it the removal of the last record would never be seen) and a second record is added and
// deleted in turn, `changes` times; each time, the time from starting nsupdate to the
// endpointer reflecting it.
func dnsPropagation(changes int) {
	addr := os.Getenv("SD_TEST_DNS")
	zone := os.Getenv("SD_TEST_DNS_ZONE")
	if zone == "" {
		zone = "sd.test"
	}
	skip := func(why string) {
		fmt.Fprintln(os.Stderr, "gokit dns scenario skipped:", why)
		emit(result{Scenario: "dns", Threads: 1, Skipped: why})
	}
	if addr == "" {
		skip("SD_TEST_DNS is not set (run: eval \"$(scripts/registries up)\")")
		return
	}
	if _, err := exec.LookPath("nsupdate"); err != nil {
		skip("nsupdate is not installed (scripts/registries installs bind9-dnsutils)")
		return
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	service := fmt.Sprintf("sdbench-gokit-%d-%d", os.Getpid(), time.Now().UnixNano())
	name := fmt.Sprintf("_%s._tcp.%s.", service, zone)
	anchor := fmt.Sprintf("update add %s 0 IN SRV 0 1 9 anchor.%s.", name, zone)
	moving := fmt.Sprintf("%s 0 IN SRV 0 1 18080 moving.%s.", name, zone)
	if err := nsupdate(addr, zone, anchor); err != nil {
		skip(err.Error())
		return
	}
	defer nsupdate(addr, zone, "update delete "+name+" SRV")

	lookup := func(_, _, name string) (string, []*net.SRV, error) {
		return resolver.LookupSRV(context.Background(), "", "", name)
	}
	instancer := dnssrv.NewInstancerDetailed(name, time.NewTicker(dnsRefresh), lookup, log.NewNopLogger())
	defer instancer.Stop()
	ep := sd.NewEndpointer(instancer, factory, log.NewNopLogger())
	defer ep.Close()
	events := make(chan sd.Event, 64)
	instancer.Register(events)
	defer instancer.Deregister(events)
	waitEndpoints(ep, 1)

	lat := make([]float64, 0, changes)
	req := make([]float64, 0, changes)
	for i := 0; i < changes; i++ {
		want, op := 1, "update delete "
		if i%2 == 0 {
			want, op = 2, "update add "
		}
		t0 := time.Now()
		if err := nsupdate(addr, zone, op+moving); err != nil {
			fmt.Fprintln(os.Stderr, "dns:", err)
			os.Exit(1)
		}
		req = append(req, float64(time.Since(t0).Nanoseconds()))
		awaitEndpoints(ep, events, want, "dns", i)
		lat = append(lat, float64(time.Since(t0).Nanoseconds()))
	}
	p50, p99 := percentiles(lat)
	reqP50, _ := percentiles(req)
	emit(result{Scenario: "dns", N: 1, Threads: 1, Ops: changes, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		RequestP50Ns: reqP50, Note: fmt.Sprintf("refresh %v", dnsRefresh)})
}
