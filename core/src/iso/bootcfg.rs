//! Boot loader configurations on an ISO: the default entry's kernel, initrds and command line
//! from isolinux/syslinux and GRUB configuration files.
//!
//! The parsers get files through a `read` function (path on the ISO → text), so they are
//! tested without an image. They follow includes to a fixed depth and count.

use std::collections::HashMap;

/// Most configuration files one parse reads (includes included).
const MAX_FILES: usize = 32;
/// Deepest include nesting.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 256 << 10;

/// A Linux boot entry found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxEntry {
    /// The entry's label or title.
    pub label: String,
    /// Kernel path on the ISO (absolute, `/`-separated).
    pub kernel: String,
    /// Initrd paths on the ISO, in load order.
    pub initrds: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// The configuration file that named the entry.
    pub config_file: String,
}

/// What a configuration says about the default entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A Linux kernel entry.
    Linux(LinuxEntry),
    /// The configuration exists but its default entry cannot be used, and why.
    Unusable(String),
}

/// Joins `path` to `dir` (both on the ISO) and removes `.` and `..` components.
pub fn resolve(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{dir}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn dir_of(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => dir.to_string(),
        _ => "/".to_string(),
    }
}

/// Where isolinux and syslinux keep their configuration, in the order they look.
pub const SYSLINUX_CONFIGS: &[&str] = &[
    "/isolinux/isolinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux.cfg",
    "/boot/x86_64/loader/isolinux.cfg",
];

/// Where GRUB configurations on ISOs usually are.
pub const GRUB_CONFIGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/EFI/BOOT/grub.cfg",
    "/grub/grub.cfg",
    "/boot/grub/loopback.cfg",
];

/// One `label` of a syslinux configuration.
#[derive(Debug, Default, Clone)]
struct SysLabel {
    name: String,
    /// The `menu label`, without its `^` hotkey marks.
    menu_label: String,
    kernel: Option<String>,
    append: String,
    initrd: Option<String>,
    menu_default: bool,
    config_file: String,
    dir: String,
}

#[derive(Default)]
struct SysState {
    labels: Vec<SysLabel>,
    default: Option<String>,
    files: usize,
}

/// The default entry of a syslinux/isolinux configuration starting at `config` (an ISO path).
/// Follows `include`, `menu include` and `config`; the default is the first label marked
/// `menu default`, else the label `default` names, else the first label with a kernel.
pub fn syslinux_default(config: &str, read: &dyn Fn(&str) -> Option<String>) -> Option<Found> {
    syslinux_entry(config, read, None)
}

/// The entry `wanted` (a label or a menu label, case and `^` ignored) of a syslinux/isolinux
/// configuration starting at `config`, or its default entry when `wanted` is `None`. An
/// entry that is not there is [`Found::Unusable`], naming the entries there are.
pub fn syslinux_entry(
    config: &str,
    read: &dyn Fn(&str) -> Option<String>,
    wanted: Option<&str>,
) -> Option<Found> {
    let text = read(config)?;
    let mut state = SysState::default();
    // isolinux's working directory is the configuration's directory.
    let base = dir_of(config);
    sys_parse(&text, config, &base, read, &mut state, 0);
    if let Some(wanted) = wanted {
        let wanted = wanted.trim();
        let matches = |l: &&SysLabel| {
            usable_kernel(l)
                && (l.name.eq_ignore_ascii_case(wanted)
                    || l.menu_label.eq_ignore_ascii_case(wanted))
        };
        let Some(label) = state.labels.iter().find(matches) else {
            let names: Vec<String> = state
                .labels
                .iter()
                .filter(|l| usable_kernel(l))
                .map(|l| {
                    if l.menu_label.is_empty() {
                        l.name.clone()
                    } else {
                        format!("{} (\"{}\")", l.name, l.menu_label)
                    }
                })
                .collect();
            return Some(Found::Unusable(format!(
                "`{config}` has no boot entry `{wanted}`; its entries are: {}",
                names.join(", ")
            )));
        };
        return Some(Found::Linux(sys_entry(label)));
    }
    let pick = state
        .labels
        .iter()
        .find(|l| l.menu_default && usable_kernel(l))
        .or_else(|| {
            state.default.as_ref().and_then(|name| {
                state
                    .labels
                    .iter()
                    .find(|l| l.name.eq_ignore_ascii_case(name) && usable_kernel(l))
            })
        })
        .or_else(|| state.labels.iter().find(|l| usable_kernel(l)));
    let Some(label) = pick else {
        return Some(Found::Unusable(format!(
            "`{config}` names no Linux kernel to boot"
        )));
    };
    Some(Found::Linux(sys_entry(label)))
}

/// The kernel, initrds and command line of a label with a usable kernel.
fn sys_entry(label: &SysLabel) -> LinuxEntry {
    let kernel = label.kernel.clone().expect("usable labels have a kernel");
    let mut initrds = Vec::new();
    let mut args = Vec::new();
    for word in label.append.split_whitespace() {
        if let Some(list) = word.strip_prefix("initrd=") {
            initrds.extend(
                list.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| resolve(&label.dir, p)),
            );
        } else {
            args.push(word);
        }
    }
    if let Some(initrd) = &label.initrd {
        initrds.extend(
            initrd
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| resolve(&label.dir, p)),
        );
    }
    LinuxEntry {
        label: label.name.clone(),
        kernel: resolve(&label.dir, &kernel),
        initrds,
        cmdline: args.join(" "),
        config_file: label.config_file.clone(),
    }
}

fn usable_kernel(label: &SysLabel) -> bool {
    label.kernel.as_deref().is_some_and(|k| {
        let lower = k.to_ascii_lowercase();
        !lower.ends_with(".c32") && !lower.ends_with(".bin") && !lower.ends_with(".0")
    })
}

fn sys_parse(
    text: &str,
    file: &str,
    base: &str,
    read: &dyn Fn(&str) -> Option<String>,
    state: &mut SysState,
    depth: usize,
) {
    state.files += 1;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = match line.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_ascii_lowercase(), r.trim()),
            None => (line.to_ascii_lowercase(), ""),
        };
        let include = |name: &str, state: &mut SysState| {
            if depth >= MAX_INCLUDE_DEPTH || state.files >= MAX_FILES {
                return;
            }
            let path = resolve(base, name);
            if let Some(text) = read(&path) {
                sys_parse(&text, &path, base, read, state, depth + 1);
            }
        };
        match keyword.as_str() {
            "include" | "config" => {
                if let Some(name) = rest.split_whitespace().next() {
                    include(name, state);
                }
            }
            "menu" => {
                let (sub, arg) = match rest.split_once(char::is_whitespace) {
                    Some((s, a)) => (s.to_ascii_lowercase(), a.trim()),
                    None => (rest.to_ascii_lowercase(), ""),
                };
                match sub.as_str() {
                    "default" => {
                        if let Some(label) = state.labels.last_mut() {
                            label.menu_default = true;
                        }
                    }
                    "include" => {
                        if let Some(name) = arg.split_whitespace().next() {
                            include(name, state);
                        }
                    }
                    "label" => {
                        if let Some(label) = state.labels.last_mut() {
                            label.menu_label = arg.replace('^', "").trim().to_string();
                        }
                    }
                    _ => {}
                }
            }
            "default" => {
                if let Some(name) = rest.split_whitespace().next() {
                    let lower = name.to_ascii_lowercase();
                    if !lower.ends_with(".c32") {
                        state.default = Some(name.to_string());
                    }
                }
            }
            "label" => state.labels.push(SysLabel {
                name: rest.to_string(),
                config_file: file.to_string(),
                dir: base.to_string(),
                ..SysLabel::default()
            }),
            "kernel" | "linux" => {
                if let Some(label) = state.labels.last_mut() {
                    label.kernel = rest.split_whitespace().next().map(str::to_string);
                }
            }
            "append" => {
                if let Some(label) = state.labels.last_mut() {
                    label.append = rest.to_string();
                }
            }
            "initrd" => {
                if let Some(label) = state.labels.last_mut() {
                    label.initrd = rest.split_whitespace().next().map(str::to_string);
                }
            }
            _ => {}
        }
    }
}

/// A GRUB `menuentry` as read.
#[derive(Debug, Default, Clone)]
struct GrubEntry {
    title: String,
    linux: Option<Vec<String>>,
    initrd: Vec<String>,
    config_file: String,
}

#[derive(Default)]
struct GrubState {
    vars: HashMap<String, String>,
    entries: Vec<GrubEntry>,
    default: Option<String>,
    files: usize,
}

/// The default entry of a GRUB configuration starting at `config`. Follows `source` and
/// `configfile` of files on the ISO; `set default=` picks the entry by number or title,
/// otherwise the first entry boots.
pub fn grub_default(config: &str, read: &dyn Fn(&str) -> Option<String>) -> Option<Found> {
    grub_entry(config, read, None)
}

/// The menu entry titled `wanted` (case ignored) of a GRUB configuration starting at
/// `config`, or its default entry when `wanted` is `None`. An entry that is not there is
/// [`Found::Unusable`], naming the entries there are.
pub fn grub_entry(
    config: &str,
    read: &dyn Fn(&str) -> Option<String>,
    wanted: Option<&str>,
) -> Option<Found> {
    let text = read(config)?;
    let mut state = GrubState::default();
    state.vars.insert("root".into(), String::new());
    state.vars.insert("prefix".into(), dir_of(config));
    state.vars.insert("grub_cpu".into(), "x86_64".into());
    state.vars.insert("grub_platform".into(), "pc".into());
    grub_parse(&text, config, read, &mut state, 0);
    if state.entries.is_empty() {
        return Some(Found::Unusable(format!("`{config}` has no menu entry")));
    }
    let index = match (wanted, state.default.as_deref()) {
        (Some(wanted), _) => match state
            .entries
            .iter()
            .position(|e| e.title.eq_ignore_ascii_case(wanted.trim()))
        {
            Some(index) => index,
            None => {
                let titles: Vec<String> = state
                    .entries
                    .iter()
                    .map(|e| format!("\"{}\"", e.title))
                    .collect();
                return Some(Found::Unusable(format!(
                    "`{config}` has no boot entry `{wanted}`; its entries are: {}",
                    titles.join(", ")
                )));
            }
        },
        (None, None) => 0,
        (None, Some(value)) => {
            if let Ok(n) = value.trim().parse::<usize>() {
                n.min(state.entries.len() - 1)
            } else if value.contains('$') {
                0
            } else {
                state
                    .entries
                    .iter()
                    .position(|e| e.title == value)
                    .unwrap_or(0)
            }
        }
    };
    let entry = &state.entries[index];
    let Some(linux) = &entry.linux else {
        return Some(Found::Unusable(format!(
            "the default entry \"{}\" of `{}` boots no Linux kernel",
            entry.title, entry.config_file
        )));
    };
    let unresolved = |word: &str| word.contains('$');
    let kernel = linux[0].clone();
    if unresolved(&kernel) || entry.initrd.iter().any(|i| unresolved(i)) {
        return Some(Found::Unusable(format!(
            "the default entry \"{}\" of `{}` names its kernel or initrd through a variable \
             Vivarium cannot work out ({})",
            entry.title,
            entry.config_file,
            std::iter::once(&kernel)
                .chain(&entry.initrd)
                .filter(|w| unresolved(w))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Some(Found::Linux(LinuxEntry {
        label: entry.title.clone(),
        kernel: resolve("/", &strip_device(&kernel)),
        initrds: entry
            .initrd
            .iter()
            .map(|i| resolve("/", &strip_device(i)))
            .collect(),
        cmdline: linux[1..].join(" "),
        config_file: entry.config_file.clone(),
    }))
}

/// Drops a GRUB device prefix like `(cd0)` or `($root)` from a path.
fn strip_device(path: &str) -> String {
    if path.starts_with('(')
        && let Some((_, rest)) = path.split_once(')')
    {
        return rest.to_string();
    }
    path.to_string()
}

/// Splits a GRUB line into words, honouring quotes and expanding known variables.
fn grub_words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            (None | Some('"'), '$') => {
                let name: String = if chars.peek() == Some(&'{') {
                    chars.next();
                    let mut name = String::new();
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        name.push(c);
                    }
                    name
                } else {
                    let mut name = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    name
                };
                match vars.get(&name) {
                    Some(value) => word.push_str(value),
                    None => {
                        word.push_str("${");
                        word.push_str(&name);
                        word.push('}');
                    }
                }
                in_word = true;
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn grub_parse(
    text: &str,
    file: &str,
    read: &dyn Fn(&str) -> Option<String>,
    state: &mut GrubState,
    depth: usize,
) {
    state.files += 1;
    let mut current: Option<GrubEntry> = None;
    let mut nesting = 0usize;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = grub_words(line, &state.vars);
        let Some(command) = words.first().map(String::as_str) else {
            continue;
        };
        match command {
            "menuentry" => {
                let title = words.get(1).cloned().unwrap_or_default();
                current = Some(GrubEntry {
                    title,
                    config_file: file.to_string(),
                    ..GrubEntry::default()
                });
                nesting = 0;
            }
            "}" if current.is_some() && nesting == 0 => {
                state.entries.extend(current.take());
            }
            "if" | "for" | "while" | "function" | "submenu" if current.is_some() => {
                nesting += 1;
            }
            "fi" | "done" | "}" => {
                nesting = nesting.saturating_sub(1);
            }
            "set" => {
                if let Some((name, value)) = words.get(1).and_then(|w| w.split_once('='))
                    && current.is_none()
                {
                    if name == "default" {
                        state.default = Some(value.to_string());
                    }
                    state.vars.insert(name.to_string(), value.to_string());
                }
            }
            "linux" | "linuxefi" | "linux16" => {
                if let (Some(entry), Some(_)) = (current.as_mut(), words.get(1))
                    && entry.linux.is_none()
                {
                    entry.linux = Some(words[1..].to_vec());
                }
            }
            "initrd" | "initrdefi" | "initrd16" => {
                if let Some(entry) = current.as_mut()
                    && entry.initrd.is_empty()
                {
                    entry.initrd = words[1..].to_vec();
                }
            }
            "source" | "configfile" if current.is_none() => {
                if depth < MAX_INCLUDE_DEPTH
                    && state.files < MAX_FILES
                    && let Some(path) = words.get(1)
                    && !path.contains('$')
                {
                    let path = resolve("/", &strip_device(path));
                    if let Some(text) = read(&path) {
                        grub_parse(&text, &path, read, state, depth + 1);
                    }
                }
            }
            _ => {}
        }
        // `menuentry ... {` with the brace on the line, and a closing brace on a line of
        // its own, are what ISO configurations use; a one-line entry closes here.
        if command == "menuentry" && line.ends_with('}') {
            state.entries.extend(current.take());
        }
    }
    state.entries.extend(current.take());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |path: &str| map.get(path).cloned()
    }

    #[test]
    fn debian_isolinux_layout_picks_the_menu_default() {
        let read = files(&[
            (
                "/isolinux/isolinux.cfg",
                "path \ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n",
            ),
            (
                "/isolinux/menu.cfg",
                "menu hshift 4\ninclude stdmenu.cfg\nmenu title Debian installer\n\
                 include gtk.cfg\nmenu begin install\n  include txt.cfg\nmenu end\n",
            ),
            ("/isolinux/stdmenu.cfg", "menu background splash.png\n"),
            (
                "/isolinux/gtk.cfg",
                "default installgui\nlabel installgui\n\tmenu label ^Graphical install\n\
                 \tmenu default\n\tkernel /install.amd/vmlinuz\n\
                 \tappend vga=788 initrd=/install.amd/gtk/initrd.gz --- quiet \n",
            ),
            (
                "/isolinux/txt.cfg",
                "label install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\
                 \tappend vga=788 initrd=/install.amd/initrd.gz --- quiet \n",
            ),
        ]);
        let Some(Found::Linux(entry)) = syslinux_default("/isolinux/isolinux.cfg", &read) else {
            panic!("no entry");
        };
        assert_eq!(entry.label, "installgui");
        assert_eq!(entry.kernel, "/install.amd/vmlinuz");
        assert_eq!(entry.initrds, ["/install.amd/gtk/initrd.gz"]);
        assert_eq!(entry.cmdline, "vga=788 --- quiet");
        assert_eq!(entry.config_file, "/isolinux/gtk.cfg");
    }

    #[test]
    fn an_entry_is_chosen_by_label_or_menu_label_else_the_entries_are_named() {
        let read = files(&[(
            "/isolinux/isolinux.cfg",
            "label install\n\tmenu label ^Install\n\tmenu default\n\tkernel /linux\n\
             \tappend vga=788 initrd=/initrd.gz --- quiet\nlabel serial\n\
             \tmenu label Install on the ^serial console\n\tkernel /linux\n\
             \tappend initrd=/initrd.gz console=ttyS0,115200n8 --- quiet\n",
        )]);
        for wanted in ["serial", "SERIAL", "install on the serial console"] {
            let Some(Found::Linux(entry)) =
                syslinux_entry("/isolinux/isolinux.cfg", &read, Some(wanted))
            else {
                panic!("no entry {wanted}");
            };
            assert_eq!(entry.label, "serial");
            assert_eq!(entry.cmdline, "console=ttyS0,115200n8 --- quiet");
            assert_eq!(entry.initrds, ["/initrd.gz"]);
        }
        let Some(Found::Unusable(why)) =
            syslinux_entry("/isolinux/isolinux.cfg", &read, Some("rescue"))
        else {
            panic!("a missing entry is unusable");
        };
        assert!(why.contains("no boot entry `rescue`"), "{why}");
        assert!(
            why.contains(r#"serial ("Install on the serial console")"#),
            "{why}"
        );

        let grub = files(&[(
            "/boot/grub/grub.cfg",
            "menuentry 'Install' {\n linux /linux --- quiet\n initrd /initrd.gz\n}\n\
             menuentry 'Install on the serial console' {\n linux /linux console=ttyS0 ---\n\
             initrd /initrd.gz\n}\n",
        )]);
        let Some(Found::Linux(entry)) = grub_entry(
            "/boot/grub/grub.cfg",
            &grub,
            Some("install on the serial console"),
        ) else {
            panic!("no GRUB entry");
        };
        assert_eq!(entry.cmdline, "console=ttyS0 ---");
        let Some(Found::Unusable(why)) = grub_entry("/boot/grub/grub.cfg", &grub, Some("x")) else {
            panic!("a missing GRUB entry is unusable");
        };
        assert!(
            why.contains(r#""Install", "Install on the serial console""#),
            "{why}"
        );
    }

    #[test]
    fn syslinux_default_by_name_and_relative_paths() {
        let read = files(&[(
            "/boot/isolinux/isolinux.cfg",
            "UI menu.c32\nDEFAULT live\nLABEL hdt\n COM32 hdt.c32\nLABEL memtest\n KERNEL memtest.bin\n\
             LABEL live\n KERNEL ../vmlinuz\n INITRD initrd.img,extra.img\n APPEND boot=live quiet\n",
        )]);
        let Some(Found::Linux(entry)) = syslinux_default("/boot/isolinux/isolinux.cfg", &read)
        else {
            panic!("no entry");
        };
        assert_eq!(entry.kernel, "/boot/vmlinuz");
        assert_eq!(
            entry.initrds,
            ["/boot/isolinux/initrd.img", "/boot/isolinux/extra.img"]
        );
        assert_eq!(entry.cmdline, "boot=live quiet");
    }

    #[test]
    fn syslinux_without_kernels_is_unusable() {
        let read = files(&[(
            "/isolinux/isolinux.cfg",
            "default memtest\nlabel memtest\n kernel memtest.bin\n",
        )]);
        assert!(matches!(
            syslinux_default("/isolinux/isolinux.cfg", &read),
            Some(Found::Unusable(_))
        ));
        assert!(syslinux_default("/none.cfg", &read).is_none());
    }

    #[test]
    fn includes_that_loop_end() {
        let read = files(&[(
            "/isolinux/isolinux.cfg",
            "include isolinux.cfg\nlabel x\nkernel /k\n",
        )]);
        assert!(matches!(
            syslinux_default("/isolinux/isolinux.cfg", &read),
            Some(Found::Linux(_))
        ));
        let read = files(&[("/boot/grub/grub.cfg", "source /boot/grub/grub.cfg\n")]);
        assert!(matches!(
            grub_default("/boot/grub/grub.cfg", &read),
            Some(Found::Unusable(_))
        ));
    }

    #[test]
    fn grub_ubuntu_first_entry() {
        let read = files(&[(
            "/boot/grub/grub.cfg",
            "set timeout=30\nloadfont unicode\nmenuentry \"Try or Install Ubuntu\" {\n\
             \tset gfxpayload=keep\n\tlinux\t/casper/vmlinuz  ---\n\tinitrd\t/casper/initrd\n}\n\
             menuentry 'Ubuntu (safe graphics)' {\n\tlinux /casper/vmlinuz nomodeset ---\n\
             \tinitrd /casper/initrd\n}\n",
        )]);
        let Some(Found::Linux(entry)) = grub_default("/boot/grub/grub.cfg", &read) else {
            panic!("no entry");
        };
        assert_eq!(entry.label, "Try or Install Ubuntu");
        assert_eq!(entry.kernel, "/casper/vmlinuz");
        assert_eq!(entry.initrds, ["/casper/initrd"]);
        assert_eq!(entry.cmdline, "---");
    }

    #[test]
    fn grub_fedora_default_number_and_sourced_file() {
        let read = files(&[
            (
                "/EFI/BOOT/grub.cfg",
                "set default=\"1\"\nsource /EFI/BOOT/entries.cfg\n",
            ),
            (
                "/EFI/BOOT/entries.cfg",
                "menuentry 'Install Fedora 39' --class fedora {\n\
                 \tlinuxefi /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=Fedora-S-dvd-x86_64-39 quiet\n\
                 \tinitrdefi /images/pxeboot/initrd.img\n}\n\
                 menuentry 'Test this media & install Fedora 39' --class fedora {\n\
                 \tlinuxefi /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=Fedora-S-dvd-x86_64-39 rd.live.check quiet\n\
                 \tinitrdefi /images/pxeboot/initrd.img\n}\n",
            ),
        ]);
        let Some(Found::Linux(entry)) = grub_default("/EFI/BOOT/grub.cfg", &read) else {
            panic!("no entry");
        };
        assert_eq!(entry.label, "Test this media & install Fedora 39");
        assert!(entry.cmdline.contains("rd.live.check"), "{}", entry.cmdline);
        assert_eq!(entry.config_file, "/EFI/BOOT/entries.cfg");
    }

    #[test]
    fn grub_variables_resolve_or_are_reported() {
        let read = files(&[(
            "/boot/grub/grub.cfg",
            "set kdir=/live\nmenuentry one {\n linux ($root)${kdir}/vmlinuz boot=live\n initrd $kdir/initrd.img\n}\n",
        )]);
        let Some(Found::Linux(entry)) = grub_default("/boot/grub/grub.cfg", &read) else {
            panic!("no entry");
        };
        assert_eq!(entry.kernel, "/live/vmlinuz");
        assert_eq!(entry.initrds, ["/live/initrd.img"]);
        let read = files(&[(
            "/boot/grub/grub.cfg",
            "menuentry one {\n linux /boot/$arch/vmlinuz\n}\n",
        )]);
        let Some(Found::Unusable(why)) = grub_default("/boot/grub/grub.cfg", &read) else {
            panic!("expected unusable");
        };
        assert!(why.contains("${arch}"), "{why}");
    }

    #[test]
    fn resolves_paths() {
        assert_eq!(
            resolve("/isolinux", "../install/vmlinuz"),
            "/install/vmlinuz"
        );
        assert_eq!(resolve("/isolinux", "/a/./b"), "/a/b");
        assert_eq!(resolve("/", "../../x"), "/x");
    }
}
