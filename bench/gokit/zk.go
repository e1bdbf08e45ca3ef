package main

import (
	"fmt"
	"os"
	"time"

	"github.com/go-kit/kit/sd/zk"
	"github.com/go-kit/log"
	gozk "github.com/go-zookeeper/zk"
)

// Scenario: propagation on the real ZooKeeper server started by scripts/registries
// (SD_TEST_ZK=host:port). go-kit's zk.NewInstancer (a one-shot children watch, re-armed
// after each event, every child's data read again) + sd.NewEndpointer watch a fresh service
// directory; one ephemeral node is created and deleted in turn, `changes` times, with a
// plain go-zookeeper connection: go-kit's own Registrar cannot deregister (it deletes the
// parent node, ZK-6). Each time, the time from issuing the create/delete to the endpointer
// reflecting it. 20 warm-up changes on another service first, as on the Rust side.
func zkPropagation(changes int) {
	addr, ok := registryAddr("zk", "SD_TEST_ZK")
	if !ok {
		return
	}
	client, err := zk.NewClient([]string{addr}, log.NewNopLogger())
	if err != nil {
		skipScenario("zk", err.Error())
		return
	}
	defer client.Stop()
	conn, _, err := gozk.Connect([]string{addr}, 5*time.Second, gozk.WithLogger(nopLogger{}))
	if err != nil {
		skipScenario("zk", err.Error())
		return
	}
	defer conn.Close()
	service := fmt.Sprintf("/sdbench-gokit/zk-%d-%d", os.Getpid(), time.Now().UnixNano())
	zkMeasure(client, conn, service+"-warm", 20)
	lat, req := zkMeasure(client, conn, service, changes)
	p50, p99 := percentiles(lat)
	reqP50, _ := percentiles(req)
	emit(result{Scenario: "zk", N: 1, Threads: 1, Ops: changes, NsPerOp: p50, P50Ns: p50, P99Ns: p99,
		RequestP50Ns: reqP50})
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...interface{}) {}

func zkMeasure(client zk.Client, conn *gozk.Conn, dir string, changes int) ([]float64, []float64) {
	instancer, err := zk.NewInstancer(client, dir, log.NewNopLogger()) // creates dir (ZK-8)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zk:", err)
		os.Exit(1)
	}
	defer instancer.Stop()
	node := dir + "/n1"
	defer conn.Delete(node, -1)
	return propagate("zk", instancer, changes, func(register bool) error {
		if register {
			_, err := conn.Create(node, []byte("127.0.0.1:18080"), gozk.FlagEphemeral, gozk.WorldACL(gozk.PermAll))
			return err
		}
		return conn.Delete(node, -1)
	})
}
