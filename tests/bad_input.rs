//! Every invalid input is rejected the way the API server would reject it: exit code 2, one line
//! on stderr naming the file, the policy and the field, nothing on stdout, never a panic.

mod common;

/// A policy skeleton: `SPEC` is replaced by the spec body (indented two spaces).
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: x\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn ingress_port(port_yaml: &str) -> String {
    policy(&format!(
        "podSelector: {{}}\ningress:\n- ports:\n  - {port_yaml}"
    ))
}

fn ingress_peer(peer_yaml: &str) -> String {
    policy(&format!(
        "podSelector: {{}}\ningress:\n- from:\n  - {peer_yaml}"
    ))
}

/// A ClusterNetworkPolicy skeleton named `cnp`: `SPEC` is the spec body.
fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: cnp\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

/// An Admin CNP at priority 10 over namespace x with one egress rule (`RULE`, a YAML mapping).
fn cnp_egress(rule: &str) -> String {
    cnp(&format!(
        "tier: Admin\npriority: 10\nsubject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\negress:\n- {rule}"
    ))
}

fn cnp_ingress(rule: &str) -> String {
    cnp(&format!(
        "tier: Admin\npriority: 10\nsubject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\ningress:\n- {rule}"
    ))
}

/// Invalid cluster-scoped policies: each one line naming the file, the object as written and the
/// field, as the CRDs' validation would reject them.
fn cluster_cases() -> Vec<Case> {
    let c = "ClusterNetworkPolicy cnp";
    let subject = "subject: {namespaces: {}}";
    let peer = "to: [{namespaces: {}}]";
    let many = |n: usize, item: &str| {
        (0..n)
            .map(|_| item.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        case("cnp without tier", cnp(&format!("priority: 1\n{subject}")), &[c, "spec.tier", "Required"]),
        case("cnp unknown tier", cnp(&format!("tier: Platform\npriority: 1\n{subject}")), &[c, "spec.tier", "Unsupported value", "Platform"]),
        case("cnp without priority", cnp(&format!("tier: Admin\n{subject}")), &[c, "spec.priority", "Required"]),
        case("cnp priority too high", cnp(&format!("tier: Admin\npriority: 1001\n{subject}")), &[c, "spec.priority", "between 0 and 1000"]),
        case("cnp negative priority", cnp(&format!("tier: Baseline\npriority: -1\n{subject}")), &[c, "spec.priority", "between 0 and 1000"]),
        case("cnp priority not a number", cnp(&format!("tier: Admin\npriority: high\n{subject}")), &[c, "spec.priority"]),
        case("cnp without subject", cnp("tier: Admin\npriority: 1"), &[c, "spec.subject", "Required"]),
        case("cnp subject with both", cnp("tier: Admin\npriority: 1\nsubject: {namespaces: {}, pods: {podSelector: {}}}"), &[c, "spec.subject", "exactly one"]),
        case("cnp empty subject", cnp("tier: Admin\npriority: 1\nsubject: {}"), &[c, "spec.subject", "exactly one"]),
        case("cnp subject pods without podSelector", cnp("tier: Admin\npriority: 1\nsubject: {pods: {namespaceSelector: {}}}"), &[c, "spec.subject.pods.podSelector", "Required"]),
        case("cnp subject bad operator", cnp("tier: Admin\npriority: 1\nsubject: {namespaces: {matchExpressions: [{key: a, operator: Near}]}}"), &[c, "spec.subject.namespaces.matchExpressions[0].operator"]),
        case("cnp unknown field", cnp(&format!("tier: Admin\npriority: 1\n{subject}\nisolation: strict")), &[c, "spec.isolation", "unknown field"]),
        case("cnp misspelled rule field", cnp_egress(&format!("{{action: Deny, {peer}, protocol: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}")), &[c, "spec.egress[0].protocol", "unknown field"]),
        case("cnp rule without action", cnp_egress(&format!("{{{peer}}}")), &[c, "spec.egress[0].action", "Required"]),
        case("cnp v1alpha1 action Allow", cnp_egress(&format!("{{action: Allow, {peer}}}")), &[c, "spec.egress[0].action", "Unsupported value", "Allow"]),
        case("cnp rule without peers", cnp_egress("{action: Deny}"), &[c, "spec.egress[0].to", "Required"]),
        case("cnp rule with empty peers", cnp_egress("{action: Deny, to: []}"), &[c, "spec.egress[0].to", "at least 1"]),
        case("cnp too many peers", cnp_egress(&format!("{{action: Deny, to: [{}]}}", many(26, "{namespaces: {}}"))), &[c, "spec.egress[0].to", "at most 25"]),
        case("cnp too many rules", cnp(&format!("tier: Admin\npriority: 1\n{subject}\ningress: [{}]", many(26, "{action: Deny, from: [{namespaces: {}}]}"))), &[c, "spec.ingress", "at most 25"]),
        case("cnp peer with two fields", cnp_egress("{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}"), &[c, "spec.egress[0].to[0]", "exactly one"]),
        case("cnp empty peer", cnp_egress("{action: Deny, to: [{}]}"), &[c, "spec.egress[0].to[0]", "exactly one"]),
        case("cnp networks in ingress", cnp_ingress("{action: Deny, from: [{networks: [10.0.0.0/8]}]}"), &[c, "spec.ingress[0].from[0].networks", "only egress"]),
        case("cnp bad cidr", cnp_egress("{action: Deny, to: [{networks: [10.0.0.300/8]}]}"), &[c, "spec.egress[0].to[0].networks[0]", "Invalid CIDR"]),
        case("cnp cidr without prefix", cnp_egress("{action: Deny, to: [{networks: [10.0.0.1]}]}"), &[c, "spec.egress[0].to[0].networks[0]", "Invalid CIDR"]),
        case("cnp duplicate network", cnp_egress("{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}"), &[c, "spec.egress[0].to[0].networks[1]", "Duplicate"]),
        case("cnp non-canonical cidr", cnp_egress("{action: Deny, to: [{networks: [10.1.2.3/8]}]}"), &[c, "spec.egress[0].to[0].networks[0]", "canonical form", "use \"10.0.0.0/8\""]),
        case("cnp v1beta1 non-canonical cidr", cnp_egress("{action: Deny, to: [{networks: [\"2001:db8::1/64\"]}]}").replace("v1alpha2", "v1beta1"), &[c, "spec.egress[0].to[0].networks[0]", "canonical form", "2001:db8::/64"]),
        case("cnp domain name with an underscore first", cnp_egress("{action: Accept, to: [{domainNames: ['_x.example.com']}]}"), &[c, "spec.egress[0].to[0].domainNames[0]", "should match"]),
        case("cnp bad domain name", cnp_egress("{action: Accept, to: [{domainNames: ['*.*.example.com']}]}"), &[c, "spec.egress[0].to[0].domainNames[0]", "should match"]),
        case("cnp named port with networks", cnp_egress("{action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}"), &[c, "spec.egress[0]", "cannot be set with namedPorts"]),
        case("cnp protocol with two keys", cnp_egress(&format!("{{action: Deny, {peer}, protocols: [{{tcp: {{destinationPort: {{number: 80}}}}, udp: {{destinationPort: {{number: 53}}}}}}]}}")), &[c, "spec.egress[0].protocols[0]", "exactly one"]),
        case("cnp protocol without port", cnp_egress(&format!("{{action: Deny, {peer}, protocols: [{{tcp: {{}}}}]}}")), &[c, "spec.egress[0].protocols[0].tcp", "destinationPort"]),
        case("cnp empty protocols", cnp_egress(&format!("{{action: Deny, {peer}, protocols: []}}")), &[c, "spec.egress[0].protocols", "at least 1"]),
        case("cnp port zero", cnp_egress(&format!("{{action: Deny, {peer}, protocols: [{{tcp: {{destinationPort: {{number: 0}}}}}}]}}")), &[c, "spec.egress[0].protocols[0].tcp.destinationPort.number", "between 1 and 65535"]),
        case("cnp port with number and range", cnp_egress(&format!("{{action: Deny, {peer}, protocols: [{{udp: {{destinationPort: {{number: 53, range: {{start: 1, end: 2}}}}}}}}]}}")), &[c, "spec.egress[0].protocols[0].udp.destinationPort", "exactly one"]),
        case("cnp one-port range", cnp_egress(&format!("{{action: Deny, {peer}, protocols: [{{tcp: {{destinationPort: {{range: {{start: 80, end: 80}}}}}}}}]}}")), &[c, "spec.egress[0].protocols[0].tcp.destinationPort.range", "Start port must be less than End port"]),
        case("cnp range without end", cnp_egress(&format!("{{action: Deny, {peer}, protocols: [{{sctp: {{destinationPort: {{range: {{start: 80}}}}}}}}]}}")), &[c, "spec.egress[0].protocols[0].sctp.destinationPort.range.end", "Required"]),
        case("cnp rule name too long", cnp_egress(&format!("{{name: {}, action: Deny, {peer}}}", "n".repeat(101))), &[c, "spec.egress[0].name", "100"]),
        case("cnp with a namespace", "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: cnp, namespace: x}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n".into(), &[c, "metadata.namespace", "cluster-scoped"]),
        case("cnp bad name", "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: Deny_All}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n".into(), &["ClusterNetworkPolicy Deny_All", "metadata.name"]),
        case("cnp wrong version", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: cnp}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n".into(), &[c, "apiVersion", "must be policy.networking.k8s.io/v1beta1 or policy.networking.k8s.io/v1alpha2"]),
        case("anp on v1alpha2", "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec: {priority: 1, subject: {namespaces: {}}}\n".into(), &["AdminNetworkPolicy anp", "apiVersion", "became a ClusterNetworkPolicy"]),
        case("anp action Accept", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Accept, to: [{namespaces: {}}]}]\n".into(), &["AdminNetworkPolicy anp", "spec.egress[0].action", "Unsupported value", "Accept"]),
        case("anp pods peer without namespaceSelector", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{pods: {podSelector: {}}}]}]\n".into(), &["AdminNetworkPolicy anp", "spec.ingress[0].from[0].pods.namespaceSelector", "Required"]),
        case("anp too many rules", format!("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: anp}}\nspec:\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  ingress: [{}]\n", many(101, "{action: Deny, from: [{namespaces: {}}]}")), &["AdminNetworkPolicy anp", "spec.ingress", "at most 100"]),
        case("anp port range backwards", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 80}}]}]\n".into(), &["AdminNetworkPolicy anp", "spec.ingress[0].ports[0].portRange", "Start port must be less than End port"]),
        case("anp bad protocol", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {protocol: ICMP, port: 1}}]}]\n".into(), &["AdminNetworkPolicy anp", "spec.ingress[0].ports[0].portNumber.protocol", "Unsupported value"]),
        case("banp not named default", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: baseline}\nspec: {subject: {namespaces: {}}}\n".into(), &["BaselineAdminNetworkPolicy baseline", "metadata.name", "default"]),
        case("banp with priority", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {priority: 3, subject: {namespaces: {}}}\n".into(), &["BaselineAdminNetworkPolicy default", "spec.priority"]),
        case("banp action Pass", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  egress: [{action: Pass, to: [{namespaces: {}}]}]\n".into(), &["BaselineAdminNetworkPolicy default", "spec.egress[0].action", "Unsupported value", "Pass"]),
    ]
}

fn selector(selector_yaml: &str) -> String {
    policy(&format!("podSelector: {selector_yaml}"))
}

struct Case {
    name: &'static str,
    text: String,
    /// Substrings the single error line must contain (besides the file name).
    expect: Vec<&'static str>,
}

fn case(name: &'static str, text: String, expect: &[&'static str]) -> Case {
    Case {
        name,
        text,
        expect: expect.to_vec(),
    }
}

fn cases() -> Vec<Case> {
    let np = "NetworkPolicy x/web";
    vec![
        // ipBlock
        case("cidr prefix too long", ingress_peer("ipBlock: {cidr: 10.0.0.0/33}"), &[np, "spec.ingress[0].from[0].ipBlock.cidr", "valid CIDR"]),
        case("cidr garbage", ingress_peer("ipBlock: {cidr: not-a-cidr}"), &[np, "ipBlock.cidr"]),
        case("cidr without prefix", ingress_peer("ipBlock: {cidr: 10.0.0.1}"), &[np, "ipBlock.cidr"]),
        case("cidr leading zeros", ingress_peer("ipBlock: {cidr: 010.0.0.0/8}"), &[np, "ipBlock.cidr"]),
        case("cidr missing", ingress_peer("ipBlock: {except: [10.0.0.0/16]}"), &[np, "ipBlock.cidr"]),
        case("cidr empty", ingress_peer("ipBlock: {cidr: ''}"), &[np, "ipBlock.cidr", "Required"]),
        case("except outside cidr", ingress_peer("ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}"), &[np, "ipBlock.except[0]", "strict subset"]),
        case("except equals cidr", ingress_peer("ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}"), &[np, "ipBlock.except[0]", "strict subset"]),
        case("except other family", ingress_peer("ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}"), &[np, "ipBlock.except[0]"]),
        case("except not a cidr", ingress_peer("ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0]}"), &[np, "ipBlock.except[0]", "valid CIDR"]),
        case("second except bad", ingress_peer("ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 12.0.0.0/16]}"), &[np, "ipBlock.except[1]"]),
        case("ipv6 except outside", ingress_peer("ipBlock: {cidr: 'fd00::/64', except: ['fd01::/80']}"), &[np, "ipBlock.except[0]"]),
        // ports
        case("endPort without port", ingress_port("{endPort: 90}"), &[np, "spec.ingress[0].ports[0].endPort", "not specified"]),
        case("endPort below port", ingress_port("{port: 90, endPort: 80}"), &[np, "ports[0].endPort", "greater than or equal"]),
        case("endPort with named port", ingress_port("{port: http, endPort: 90}"), &[np, "ports[0].endPort", "non-numeric"]),
        case("endPort out of range", ingress_port("{port: 80, endPort: 65536}"), &[np, "ports[0].endPort", "65535"]),
        case("protocol lowercase", ingress_port("{protocol: tcp, port: 80}"), &[np, "ports[0].protocol", "Unsupported value"]),
        case("protocol unknown", ingress_port("{protocol: ICMP}"), &[np, "ports[0].protocol"]),
        case("port zero", ingress_port("{port: 0}"), &[np, "ports[0].port", "between 1 and 65535"]),
        case("port too big", ingress_port("{port: 70000}"), &[np, "ports[0].port", "between 1 and 65535"]),
        case("port negative", ingress_port("{port: -1}"), &[np, "ports[0].port"]),
        case("port name upper case", ingress_port("{port: HTTP}"), &[np, "ports[0].port", "alpha-numeric"]),
        case("port name digits only", ingress_port("{port: '80'}"), &[np, "ports[0].port", "at least one letter"]),
        case("port name too long", ingress_port("{port: a-very-long-port-name}"), &[np, "ports[0].port", "15"]),
        case("port name double hyphen", ingress_port("{port: web--api}"), &[np, "ports[0].port", "consecutive"]),
        case("port is a list", ingress_port("{port: [80]}"), &[np, "ports[0].port"]),
        case("egress port path", policy("podSelector: {}\negress:\n- ports:\n  - {port: 0}"), &[np, "spec.egress[0].ports[0].port"]),
        // selectors
        case("bad operator", selector("{matchExpressions: [{key: app, operator: Equals, values: [a]}]}"), &[np, "spec.podSelector.matchExpressions[0].operator"]),
        case("operator lowercase", selector("{matchExpressions: [{key: app, operator: in, values: [a]}]}"), &[np, "matchExpressions[0].operator"]),
        case("In without values", selector("{matchExpressions: [{key: app, operator: In}]}"), &[np, "matchExpressions[0].values", "Required"]),
        case("NotIn with empty values", selector("{matchExpressions: [{key: app, operator: NotIn, values: []}]}"), &[np, "matchExpressions[0].values"]),
        case("Exists with values", selector("{matchExpressions: [{key: app, operator: Exists, values: [a]}]}"), &[np, "matchExpressions[0].values", "Forbidden"]),
        case("DoesNotExist with values", selector("{matchExpressions: [{key: app, operator: DoesNotExist, values: [a]}]}"), &[np, "matchExpressions[0].values"]),
        case("expression key with space", selector("{matchExpressions: [{key: 'bad key', operator: Exists}]}"), &[np, "matchExpressions[0].key"]),
        case("expression key bad prefix", selector("{matchExpressions: [{key: 'Example.com/app', operator: Exists}]}"), &[np, "matchExpressions[0].key", "prefix"]),
        case("expression value invalid", selector("{matchExpressions: [{key: app, operator: In, values: [ok, 'not ok']}]}"), &[np, "matchExpressions[0].values[1]"]),
        case("matchLabels bad key", selector("{matchLabels: {-app: web}}"), &[np, "spec.podSelector.matchLabels"]),
        case("matchLabels bad value", selector("{matchLabels: {app: 'has space'}}"), &[np, "spec.podSelector.matchLabels.app"]),
        case("matchLabels value too long", selector(&format!("{{matchLabels: {{app: {}}}}}", "v".repeat(64))), &[np, "matchLabels.app", "63"]),
        case("matchLabels boolean value", selector("{matchLabels: {app: true}}"), &[np, "spec.podSelector.matchLabels.app", "quote"]),
        case("peer selector invalid", ingress_peer("namespaceSelector: {matchExpressions: [{key: ns, operator: Has}]}"), &[np, "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator"]),
        case("egress peer selector invalid", policy("podSelector: {}\negress:\n- to:\n  - podSelector: {matchLabels: {'a b': c}}"), &[np, "spec.egress[0].to[0].podSelector.matchLabels"]),
        case("podSelector a string", selector("app=web"), &[np, "spec.podSelector"]),
        // peers
        case("empty peer", ingress_peer("{}"), &[np, "spec.ingress[0].from[0]", "must specify a peer"]),
        case("ipBlock with selector", ingress_peer("{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}"), &[np, "spec.ingress[0].from[0]", "may not specify both"]),
        // policyTypes
        case("policyTypes lowercase", policy("podSelector: {}\npolicyTypes: [ingress]"), &[np, "spec.policyTypes[0]", "Unsupported value"]),
        case("policyTypes unknown", policy("podSelector: {}\npolicyTypes: [Ingress, Both]"), &[np, "spec.policyTypes[1]"]),
        case("policyTypes three", policy("podSelector: {}\npolicyTypes: [Ingress, Egress, Ingress]"), &[np, "spec.policyTypes", "more than two"]),
        case("policyTypes not a list", policy("podSelector: {}\npolicyTypes: Ingress"), &[np, "spec.policyTypes"]),
        // metadata
        case("missing name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {podSelector: {}}\n".into(), &["NetworkPolicy (unnamed)", "metadata.name", "Required"]),
        case("bad name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name, namespace: x}\nspec: {podSelector: {}}\n".into(), &["NetworkPolicy x/Bad_Name", "metadata.name"]),
        case("bad namespace", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: Prod}\nspec: {podSelector: {}}\n".into(), &["NetworkPolicy Prod/web", "metadata.namespace"]),
        // unknown fields (typos)
        case("typo in spec", policy("podSelecor: {}"), &[np, "spec.podSelecor", "unknown field"]),
        case("typo deep in ports", ingress_port("{port: 80, prot: TCP}"), &[np, "spec.ingress[0].ports[0].prot", "unknown field"]),
        case("typo in peer", ingress_peer("{namespaceSelecter: {}}"), &[np, "spec.ingress[0].from[0].namespaceSelecter", "unknown field"]),
        case("typo in rule", policy("podSelector: {}\ningress:\n- form:\n  - podSelector: {}"), &[np, "spec.ingress[0].form", "unknown field"]),
        case("typo in metadata", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x, lables: {a: b}}\nspec: {podSelector: {}}\n".into(), &[np, "metadata.lables", "unknown field"]),
        case("typo at top level", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspecs: {podSelector: {}}\n".into(), &[np, "specs", "unknown field"]),
        case("typo in selector", selector("{matchLabel: {app: web}}"), &[np, "spec.podSelector.matchLabel", "unknown field"]),
        case("typo in expression", selector("{matchExpressions: [{key: app, operater: Exists}]}"), &[np, "spec.podSelector.matchExpressions[0]"]),
        case("ingress not a list", policy("podSelector: {}\ningress: {from: []}"), &[np, "spec.ingress"]),
        // kind and apiVersion
        case("old apiVersion", "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec: {podSelector: {}}\n".into(), &[np, "apiVersion", "networking.k8s.io/v1"]),
        case("missing apiVersion", "kind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec: {podSelector: {}}\n".into(), &[np, "apiVersion"]),
        case("misspelled kind", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolcy\nmetadata: {name: web, namespace: x}\n".into(), &["NetworkPolcy", "not supported"]),
        case("missing kind", "apiVersion: networking.k8s.io/v1\nmetadata: {name: web}\n".into(), &["kind", "Required"]),
        case("admin network policy without subject", "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: deny}\nspec: {priority: 10}\n".into(), &["AdminNetworkPolicy deny", "spec.subject", "Required value"]),
        case("scalar document", "just a string\n".into(), &["kind", "Required"]),
        case("list items not a list", "apiVersion: v1\nkind: List\nitems: {a: b}\n".into(), &["List", "items"]),
        // where in a file
        case("second document", format!("{}---\n{}", policy("podSelector: {}"), ingress_port("{port: 0}")), &["(document 2)", np, "ports[0].port"]),
        case("list item", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: ok, namespace: x}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: web, namespace: x}\n  spec: {podSelector: {}, policyTypes: [Sideways]}\n".into(), &["(items[1])", np, "spec.policyTypes[0]"]),
        // YAML itself
        case("broken yaml", "apiVersion: networking.k8s.io/v1\nkind: [NetworkPolicy\n".into(), &["not valid YAML"]),
        case("duplicate key", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nkind: NetworkPolicy\n".into(), &["not valid YAML"]),
        case("tab indentation", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n\tname: web\n".into(), &["not valid YAML"]),
    ]
}

fn assert_rejected(name: &str, args: &[&str], stdin: &str, expect: &[&str]) {
    let output = common::polygraph(args, stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{name}: exit code, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
    assert!(
        stdout.is_empty(),
        "{name}: printed output despite the error: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{name}: error must be one line, got: {stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{name}: {stderr}");
    for needle in expect {
        assert!(
            lines[0].contains(needle),
            "{name}: {:?} should contain {needle:?}",
            lines[0]
        );
    }
}

#[test]
fn invalid_policies_are_rejected_with_one_line_naming_file_policy_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cases = cases();
    let cluster = cluster_cases();
    assert!(
        cluster.len() >= 30,
        "30+ invalid cluster policies, have {}",
        cluster.len()
    );
    cases.extend(cluster);
    for case in &cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, &case.text).expect("write case");
        let path = path.display().to_string();
        let mut expect = case.expect.clone();
        expect.push(&path);
        assert_rejected(case.name, &["analyze", "-f", &path], "", &expect);
    }
    println!("{} invalid inputs rejected", cases.len());
}

#[test]
fn stdin_errors_name_stdin() {
    assert_rejected(
        "stdin",
        &["analyze", "-f", "-"],
        &ingress_port("{port: 0}"),
        &["<stdin>", "ports[0].port"],
    );
}

#[test]
fn missing_file_and_empty_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.yaml").display().to_string();
    assert_rejected(
        "missing file",
        &["analyze", "-f", &missing],
        "",
        &[&missing],
    );
    let empty = dir.path().display().to_string();
    assert_rejected(
        "empty dir",
        &["analyze", "-f", &empty],
        "",
        &[&empty, "no .yaml"],
    );
}

#[test]
fn bad_cluster_files_name_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster_cases = [
        (
            "pods: [{namespace: nowhere, name: a}]\n",
            "pods[0].namespace",
        ),
        (
            "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ip: 300.1.1.1}]\n",
            "pods[0].ip",
        ),
        (
            "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80, protocol: ICMP}]}]\n",
            "pods[0].ports[0].protocol",
        ),
        (
            "namespaces: [{name: x, labelz: {}}]\n",
            "namespaces[0].labelz",
        ),
        (
            "namespaces: [{name: x}]\n---\nnamespaces: [{name: y}]\n",
            "one YAML document",
        ),
    ];
    for (text, field) in cluster_cases {
        let path = dir.path().join("cluster.yaml");
        std::fs::write(&path, text).expect("write");
        let path = path.display().to_string();
        assert_rejected(field, &["analyze", "--cluster", &path], "", &[&path, field]);
    }
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "namespaces: [{name: x}\n").expect("write");
    let path = path.display().to_string();
    let output = common::polygraph(&["analyze", "--cluster", &path], "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains(&format!("{path}:1:")), "{stderr}");
    assert_eq!(
        stderr.matches(&path).count(),
        1,
        "file named once: {stderr}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_rejected(
        "explain unknown pod",
        &["analyze", "--explain", "x/a,q/q"],
        "",
        &["q/q", "not in the cluster model"],
    );
    assert_rejected(
        "explain malformed",
        &["analyze", "--explain", "x/a"],
        "",
        &["FROM,TO"],
    );
    assert_rejected("port zero", &["analyze", "--port", "0"], "", &["--port"]);
    let output = common::polygraph(&["analyze", "--protocol", "ICMP"], "");
    assert_eq!(output.status.code(), Some(2));
}

/// A run that fails before its first scenario (here: a kubeconfig whose current context is not
/// in it) still writes its JUnit and JSON: one `setup` test case in error, valid against the
/// schema, and the failure in the JSON's `setup_error`. A CI dashboard never sees "no report".
#[test]
fn a_run_that_cannot_reach_its_cluster_still_writes_its_reports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"apiVersion: v1
kind: Config
current-context: vanished
clusters:
  - name: gone
    cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
contexts:
  - name: gone
    context: {cluster: gone, user: admin}
users:
  - name: admin
    user: {token: not-a-real-token}
"#,
    )
    .expect("write");
    let (output, junit, json) = common::run_on_kubeconfig(&kubeconfig, dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    let xml = std::fs::read_to_string(&junit).expect("a JUnit report");
    common::validate_junit(&junit);
    assert!(
        xml.contains(r#"<testcase name="setup" classname="setup""#),
        "{xml}"
    );
    assert!(xml.contains(r#"type="setup""#), "{xml}");
    let text = std::fs::read_to_string(&json).expect("a JSON report");
    let _: common::schema::RunJson = serde_json::from_str(&text).expect("the documented JSON");
    let report: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["passed"], false);
    assert_eq!(report["scenarios"].as_array().map(Vec::len), Some(0));
    let error = report["setup_error"].as_str().expect("setup_error");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(error.lines().next().unwrap_or(error))),
        "the JSON's error is the one printed: {error} / {stderr}"
    );
}

#[test]
fn a_bad_implementation_file_is_named_with_its_line_before_anything_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("vendor.yaml");
    std::fs::write(
        &file,
        "organization: ACME\nproject: acme-cni\nwebsite: https://example.com\n",
    )
    .expect("write");
    let out = dir.path().join("certification");
    let path = file.display().to_string();
    assert_rejected(
        "unknown implementation field",
        &[
            "certify",
            "--backend",
            "sim",
            "--implementation",
            &path,
            "--output-dir",
            &out.display().to_string(),
        ],
        "",
        &[
            &format!("{path}:3:1: implementation:"),
            "unknown field `website`",
        ],
    );
    assert!(
        !out.exists(),
        "nothing written before the input is known good"
    );
}
