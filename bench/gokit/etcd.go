package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/go-kit/kit/sd/etcdv3"
	"github.com/go-kit/log"
)

// Scenario: propagation on the real etcd started by scripts/registries (SD_TEST_ETCD, etcd
// 3.4). go-kit's etcdv3.NewInstancer (a prefix watch; every event re-reads the whole prefix)
// + sd.NewEndpointer watch a fresh prefix; go-kit's own etcdv3.Registrar registers (lease
// grant, put with the lease, keep-alive) and deregisters (delete) one instance in turn,
// `changes` times. Each time, the time from issuing Register/Deregister to the endpointer
// reflecting it. The registrar and the instancer each have a client of their own: on a
// shared client go-kit's Register closes the instancer's watch (E3-4). 20 warm-up changes on
// another prefix first, as on the Rust side.
func etcdPropagation(changes int) {
	addr, ok := registryAddr("etcd", "SD_TEST_ETCD")
	if !ok {
		return
	}
	client := func() etcdv3.Client {
		c, err := etcdv3.NewClient(context.Background(), []string{"http://" + addr}, etcdv3.ClientOptions{})
		if err != nil {
			skipScenario("etcd", err.Error())
			os.Exit(0)
		}
		return c
	}
	watcher, registrant := client(), client()
	prefix := fmt.Sprintf("/sdbench-gokit/etcd-%d-%d", os.Getpid(), time.Now().UnixNano())
	etcdMeasure(watcher, registrant, prefix+"-warm", 20)
	lat, req := etcdMeasure(watcher, registrant, prefix, changes)
	p50, p99 := percentiles(lat)
	reqP50, _ := percentiles(req)
	emit(result{Scenario: "etcd", N: 1, Threads: 1, Ops: changes, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		RequestP50Ns: reqP50})
}

func etcdMeasure(watcher, registrant etcdv3.Client, prefix string, changes int) ([]float64, []float64) {
	instancer, err := etcdv3.NewInstancer(watcher, prefix+"/", log.NewNopLogger())
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
	defer instancer.Stop()
	registrar := etcdv3.NewRegistrar(registrant, etcdv3.Service{
		Key:   prefix + "/n1",
		Value: "127.0.0.1:18080",
		TTL:   etcdv3.NewTTLOption(time.Second, 10*time.Second),
	}, log.NewNopLogger())
	return propagate("etcd", instancer, changes, func(register bool) error {
		if register {
			registrar.Register()
		} else {
			registrar.Deregister()
		}
		return nil
	})
}
