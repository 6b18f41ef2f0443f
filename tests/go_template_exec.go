// Executes Ollama TEMPLATEs with Go's own text/template, on the values Ollama passes a `.Messages`
// template (tests/test_chat_template_render.py builds them). Input: a JSON list of cases on stdin;
// output: a JSON list of {"out", "err"}.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
	"time"
)

// The fields of Ollama's api.Message a TEMPLATE can see here (tools absent).
type Message struct {
	Role      string
	Content   string
	Thinking  string
	Images    []string
	ToolCalls []any
	ToolName  string
}

type Case struct {
	Template string
	System   string
	Messages []Message
	Extra    map[string]any
	Now      string // RFC 3339: the clock currentDate reads, pinned so a dated prompt can be compared
}

type Result struct {
	Out string `json:"out"`
	Err string `json:"err"`
}

// Ollama's template functions (template/template.go) that the templates here may call; the date
// functions as Ollama writes them (any format argument ignored), on the case's clock.
func funcs(now time.Time) template.FuncMap {
	return template.FuncMap{
		"json":          func(v any) string { b, _ := json.Marshal(v); return string(b) },
		"currentDate":   func(args ...string) string { return now.Format("2006-01-02") },
		"yesterdayDate": func(args ...string) string { return now.AddDate(0, 0, -1).Format("2006-01-02") },
	}
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	results := make([]Result, 0, len(cases))
	for _, c := range cases {
		now := time.Now()
		if c.Now != "" {
			pinned, err := time.Parse(time.RFC3339, c.Now)
			if err != nil {
				panic(err)
			}
			now = pinned
		}
		tmpl, err := template.New("").Funcs(funcs(now)).Parse(c.Template)
		if err != nil {
			results = append(results, Result{Err: err.Error()})
			continue
		}
		values := map[string]any{"System": c.System, "Messages": c.Messages, "Tools": []any(nil),
			"Response": "", "Think": false, "ThinkLevel": "", "IsThinkSet": false}
		for k, v := range c.Extra {
			values[k] = v
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, values); err != nil {
			results = append(results, Result{Out: b.String(), Err: err.Error()})
			continue
		}
		results = append(results, Result{Out: b.String()})
	}
	json.NewEncoder(os.Stdout).Encode(results)
}
