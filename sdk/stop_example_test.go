package sdk_test

import (
	"context"
	"fmt"

	"github.com/plugd/plugd/sdk"
)

// supervisor stands for a plugin that runs child processes: a swap hands
// them to the next version, a host restart adopts them, an unload ends them.
type supervisor struct{ children []int }

func (s *supervisor) Stop(ctx context.Context) error {
	switch sdk.StopReasonFrom(ctx) {
	case sdk.StopReplaced, sdk.StopShutdown:
		fmt.Printf("leaving %d children running\n", len(s.children))
	case sdk.StopUnloaded:
		fmt.Printf("ending %d children\n", len(s.children))
	}
	return nil
}

func ExampleStopReasonFrom() {
	s := &supervisor{children: []int{101, 102}}
	s.Stop(sdk.WithStopReason(context.Background(), sdk.StopReplaced))
	s.Stop(context.Background()) // no reason: as if unloaded
	// Output:
	// leaving 2 children running
	// ending 2 children
}
