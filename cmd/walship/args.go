package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsFirst moves the flags an operator wrote after a command's arguments
// in front of them. urfave/cli v2 stops reading flags at the first
// positional argument, so "walship slot create dr --ttl 72h" would otherwise
// be three arguments. Everything after "--" is left as it is.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	cmds, flags := app.Commands, app.Flags
	var moved, positional []string
	i := 1
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if len(a) > 1 && strings.HasPrefix(a, "-") {
			takes := takesValue(flags, a)
			if takes && i+1 == len(args) {
				// A flag missing its value: let the CLI say so.
				return args
			}
			if len(positional) > 0 {
				moved = append(moved, a)
			} else {
				out = append(out, a)
			}
			if takes && i+1 < len(args) {
				i++
				if len(positional) > 0 {
					moved = append(moved, args[i])
				} else {
					out = append(out, args[i])
				}
			}
			continue
		}
		if len(positional) == 0 {
			if sub := findCommand(cmds, a); sub != nil {
				out = append(out, a)
				cmds, flags = sub.Subcommands, sub.Flags
				continue
			}
		}
		positional = append(positional, a)
	}
	out = append(out, moved...)
	out = append(out, positional...)
	return append(out, args[i:]...)
}

// takesValue: whether the flag written as arg ("--name", "-n" or
// "--name=value") consumes the next argument as its value.
func takesValue(flags []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if v, ok := f.(cli.DocGenerationFlag); ok {
				return v.TakesValue()
			}
			return false
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// setGlobal finds the innermost command level at which a global flag was
// given: "walship --archive X fetch ..." and "walship fetch --archive X ..."
// mean the same. Each level declares the global flags, so asking only the
// command's own context would miss one written before the command name.
func setGlobal(c *cli.Context, name string) (*cli.Context, bool) {
	for _, cc := range c.Lineage() {
		if cc.Command == nil && cc.App == nil {
			continue
		}
		if cc.IsSet(name) {
			return cc, true
		}
	}
	return nil, false
}

// ownRequired takes the check of required flags away from the CLI library,
// which prints the whole help page to stdout before its error, and does it
// in Before: one line on stderr, exit 2.
func ownRequired(c *cli.Command) {
	var names []string
	for _, f := range c.Flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			if f.Required {
				f.Required, names = false, append(names, f.Name)
			}
		case *cli.IntFlag:
			if f.Required {
				f.Required, names = false, append(names, f.Name)
			}
		case *cli.DurationFlag:
			if f.Required {
				f.Required, names = false, append(names, f.Name)
			}
		}
	}
	if len(names) == 0 {
		return
	}
	before := c.Before
	c.Before = func(cc *cli.Context) error {
		for _, n := range names {
			if !cc.IsSet(n) {
				return &exitError{code: exitUsage, err: fmt.Errorf("%s: required flag --%s not set", c.Name, n)}
			}
		}
		if before != nil {
			return before(cc)
		}
		return nil
	}
}

// ownDefaults makes help show a flag's real default once: the library
// would print "(default: 0)" after the "(default 16)" the usage states,
// because the flag's own value stays zero so that the configuration file
// can supply it. A zero number that means "not set" shows "none".
func ownDefaults(c *cli.Command) {
	for _, f := range c.Flags {
		switch f := f.(type) {
		case *cli.IntFlag:
			f.Usage, f.DefaultText = splitDefault(f.Usage, f.DefaultText)
			if f.Value == 0 && f.DefaultText == "" && !strings.Contains(f.Usage, "0") {
				f.DefaultText = "none"
			}
		case *cli.DurationFlag:
			f.Usage, f.DefaultText = splitDefault(f.Usage, f.DefaultText)
			if f.Value == 0 && f.DefaultText == "" && !strings.Contains(f.Usage, "0") {
				f.DefaultText = "none"
			}
		case *cli.StringFlag:
			f.Usage, f.DefaultText = splitDefault(f.Usage, f.DefaultText)
		}
	}
}

// splitDefault takes the "(default X)" that ends a flag's usage, where its
// real default comes from the configuration rather than from the flag, and
// returns the usage without it and X (unless text is already set). It runs
// for every flag of every command at start, so it is a plain scan, not a
// regular expression.
func splitDefault(usage, text string) (string, string) {
	if text != "" || !strings.HasSuffix(usage, ")") {
		return usage, text
	}
	// X holds no ")": the match starts after the last ")" before the end.
	from := strings.LastIndexByte(usage[:len(usage)-1], ')') + 1
	i := strings.Index(usage[from:], "(default ")
	if i < 0 {
		return usage, text
	}
	i += from
	return strings.TrimRight(usage[:i], " \t\n\f\r"), usage[i+len("(default ") : len(usage)-1]
}
