package config

import (
	"testing"
)

// The example file documents every setting; it must load as it is.
func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../docs/examples/walship.yaml", func(k string) string {
		if k == "S3_ENDPOINT" {
			return "https://s3.example.internal"
		}
		return ""
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Schedule.Jobs) != 6 || c.Retention.KeepLast != 2 || c.Agent.Slot != "dr1" || c.Backup.Type != BackupFull ||
		c.Schedule.Jobs[1].Type != BackupIncremental {
		t.Fatalf("%+v", c)
	}
}
