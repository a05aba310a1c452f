package flatjson

import "testing"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{`{"a":"x","b":-12,"c":0}`, true},
		{`{}`, true},
		{`{"a":"x"}`, true},
		{`{"a":"x",}`, false},      // trailing comma
		{`{"a":"x"} `, false},      // whitespace
		{`{"a": "x"}`, false},      // whitespace
		{`{"a":"x\"y"}`, false},    // an escape
		{`{"a":"é"}`, false},       // not ASCII
		{`{"a":1.5}`, false},       // not an integer
		{`{"a":1e3}`, false},       // not an integer
		{`{"a":01}`, false},        // a leading zero
		{`{"a":-}`, false},         // no digits
		{`{"a":null}`, false},      // not a string or integer
		{`{"a":{"b":"c"}}`, false}, // not flat
		{`{"a":"x""b":"y"}`, false},
		{`{"1":1,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7,"8":8}`, true},
		{`{"1":1,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7,"8":8,"9":9}`, false}, // more than MaxFields
		{`[]`, false},
		{``, false},
	} {
		if _, ok := Parse([]byte(c.in)); ok != c.ok {
			t.Errorf("Parse(%s): ok %v, want %v", c.in, ok, c.ok)
		}
	}
}

func TestValues(t *testing.T) {
	o, ok := Parse([]byte(`{"s":"text","n":-40029,"big":99999999999999999999}`))
	if !ok {
		t.Fatal("not parsed")
	}
	if s, ok := o.String("s"); s != "text" || !ok {
		t.Errorf("String(s) = %q, %v", s, ok)
	}
	if n, ok := o.Int("n"); n != -40029 || !ok {
		t.Errorf("Int(n) = %d, %v", n, ok)
	}
	if _, ok := o.String("n"); ok {
		t.Error("String of an integer said ok")
	}
	if _, ok := o.Int("s"); ok {
		t.Error("Int of a string said ok")
	}
	if _, ok := o.Int("big"); ok {
		t.Error("Int of a number past int's range said ok")
	}
	if s, ok := o.String("absent"); s != "" || !ok {
		t.Errorf("String(absent) = %q, %v", s, ok)
	}
	if !o.Only("s", "n", "big", "other") || o.Only("s", "n") {
		t.Error("Only does not tell the known keys from the others")
	}
	if d, _ := Parse([]byte(`{"a":"x","a":"y"}`)); d.Only("a") {
		t.Error("Only let a duplicate key through")
	}
}
