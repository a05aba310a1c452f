package config

import "testing"

// The per-client limit's settings: off by default, parsed, and refused
// with the variable's name when they cannot work.

func TestEdgeClientLimitDefaults(t *testing.T) {
	clearEnv(t)
	var c EdgeConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	if c.ClientRate != 0 || c.ClientBurst != 0 || c.TrustProxy {
		t.Errorf("client limit must be off by default: rate %g burst %d trust %v", c.ClientRate, c.ClientBurst, c.TrustProxy)
	}
}

func TestEdgeClientLimitSettings(t *testing.T) {
	clearEnv(t)
	setenv(t, map[string]string{"EDGE_CLIENT_RATE": "2.5", "EDGE_CLIENT_BURST": "10", "EDGE_TRUST_PROXY": "true"})
	var c EdgeConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	if c.ClientRate != 2.5 || c.ClientBurst != 10 || !c.TrustProxy {
		t.Errorf("got rate %g burst %d trust %v", c.ClientRate, c.ClientBurst, c.TrustProxy)
	}
	var a AllInOneConfig
	if err := Load(&a); err != nil {
		t.Fatal(err)
	}
	if a.Edge.ClientRate != 2.5 {
		t.Errorf("all-in-one: rate %g", a.Edge.ClientRate)
	}
}

func TestEdgeClientLimitInvalid(t *testing.T) {
	for _, tc := range []struct{ name, key, value string }{
		{"rate negative", "EDGE_CLIENT_RATE", "-1"},
		{"rate NaN", "EDGE_CLIENT_RATE", "NaN"},
		{"rate infinite", "EDGE_CLIENT_RATE", "+Inf"},
		{"rate garbage", "EDGE_CLIENT_RATE", "fast"},
		{"burst negative", "EDGE_CLIENT_BURST", "-3"},
		{"trust garbage", "EDGE_TRUST_PROXY", "perhaps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(tc.key, tc.value)
			checkErr(t, Load(&EdgeConfig{}), tc.key)
		})
	}
}
